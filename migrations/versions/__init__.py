"""Alembic revisions (loaded by Alembic from their files, never imported by name)."""
