"""Migrations: upgrade from empty, downgrade to base and upgrade again, on SQLite and PostgreSQL; and
the migrated schema matches the models (no model change without a migration)."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

import models_registry  # noqa: F401
from db import Base, build_engine
from migrations.runner import downgrade, upgrade
from tests.fixtures.database import create_pg_database, drop_pg_database, pg_reachable, require_or_skip

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"


def _tables(url: str) -> set[str]:
    engine = build_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def _diff(url: str) -> list:
    engine = build_engine(url)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": False})
            return compare_metadata(ctx, Base.metadata)
    finally:
        engine.dispose()


def _functions(url: str) -> set[str]:
    """The functions the migrations create (PostgreSQL; SQLite has none)."""
    engine = build_engine(url)
    try:
        if engine.dialect.name != "postgresql":
            return set()
        with engine.connect() as conn:
            return set(conn.scalars(text("SELECT proname FROM pg_proc WHERE proname LIKE 'renopay%'")))
    finally:
        engine.dispose()


def _round_trip(url: str, functions: set[str]) -> None:
    upgrade(url)
    assert _tables(url) == set(Base.metadata.tables)
    assert _functions(url) == functions
    assert _diff(url) == []
    downgrade(url, "base")
    assert (_tables(url), _functions(url)) == (set(), set())
    upgrade(url)
    assert _tables(url) == set(Base.metadata.tables)


def test_migrations_round_trip_on_sqlite(tmp_path):
    _round_trip(f"sqlite:///{tmp_path / 'm.sqlite3'}", set())


@pytest.mark.postgres
def test_migrations_round_trip_on_postgresql():
    reason = pg_reachable(DEFAULT_PG)
    if reason:
        require_or_skip(reason, "RENOPAY_REQUIRE_POSTGRES")
    url = create_pg_database(DEFAULT_PG)
    try:
        _round_trip(url, {"renopay_apply_fitting_payment"})
    finally:
        drop_pg_database(url)
