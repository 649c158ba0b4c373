"""The SQLAlchemy models and the database built from schema.sql describe the same tables."""

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from psycopg import Connection
from sqlalchemy import create_engine
from sqlalchemy.dialects import postgresql
from sqlalchemy.pool import NullPool

from app.models import CHECKS, Base, views
from tests.cluster import Cluster


def test_models_match_the_live_schema(postgresql: Connection[Any], pg_server: Cluster) -> None:
    url = pg_server.admin_dsn(postgresql.info.dbname).replace(
        "postgresql://", "postgresql+psycopg://"
    )
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            diff = compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()

    # Comments are documentation with one home, schema.sql; everything else must agree.
    comments = {"modify_comment", "add_table_comment", "remove_table_comment"}
    structural = [d for d in diff if (d[0][0] if isinstance(d, list) else d[0]) not in comments]
    assert structural == []


def test_models_name_the_same_check_constraints(db: Connection[Any]) -> None:
    # compare_metadata ignores CHECK constraints; their names are what the API maps.
    for table in Base.metadata.sorted_tables:
        modelled = table.info.get(CHECKS, frozenset())
        live = db.execute(
            "SELECT conname FROM pg_constraint WHERE conrelid = %s::regclass AND contype = 'c'",
            (table.name,),
        ).fetchall()
        assert modelled == {name for (name,) in live}, table.name


def test_view_descriptions_match_the_views(db: Connection[Any]) -> None:
    for view in views.sorted_tables:
        live = db.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = %s ORDER BY ordinal_position",
            (view.name,),
        ).fetchall()
        described = [
            (c.name, c.type.compile(dialect=postgresql.dialect()).lower()) for c in view.columns
        ]
        assert live == described, view.name
