"""Prefect flows and the ``geolabel`` CLI: they only orchestrate geoseg, storage and labeling."""
