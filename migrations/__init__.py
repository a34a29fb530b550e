"""Alembic migrations of the geolabel schema. Run them with ``geolabel db upgrade`` or ``storage.db.upgrade(url)``."""
