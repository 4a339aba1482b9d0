"""The database: SQLAlchemy engine and pragmas, tables, Alembic migrations."""
