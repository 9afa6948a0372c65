"""Alembic migrations of the Jobtrail SQL schema, installed as ``app.migrations``."""
