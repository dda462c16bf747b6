"""Persistence: SQLModel tables, the database handle, Alembic migrations."""
