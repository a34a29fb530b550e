"""Storage: SQLAlchemy models of every stage's record, repositories, blob stores and settings."""
