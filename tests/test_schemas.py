import sqlite3

import pytest

from lib.schemas import DOMAINS, generate_schema
from lib.sql_eval import structure


def test_same_seed_same_schema_and_seeds_differ():
    assert generate_schema(7) == generate_schema(7)
    # small domains can repeat a draw: the dataset builder skips repeats, so they must stay rare
    assert len({generate_schema(seed).ddl() for seed in range(200)}) >= 190


@pytest.mark.parametrize("domain", sorted(DOMAINS))
def test_every_domain_executes_in_sqlite_with_its_keys(domain):
    for seed in range(20):
        schema = generate_schema(seed, domain)
        assert 3 <= len(schema.tables) <= 5
        created = structure(schema.ddl())  # raises if SQLite rejects it
        assert set(created.columns) == {t.name for t in schema.tables}
        for table in schema.tables:
            assert created.columns[table.name] == {c.name: c.type for c in table.columns}
            assert {(table.name, c) for c in table.primary_key} <= created.primary_keys
            for column, to_table, to_column in table.foreign_keys:
                assert to_table in created.columns, "a referenced table is always in the schema"
                assert (table.name, column, to_table, to_column) in created.foreign_keys


def test_constraints_and_defaults_reach_sqlite():
    schema = next(generate_schema(s, "shop") for s in range(100)
                  if any(c.default for t in generate_schema(s, "shop").tables for c in t.columns))
    with sqlite3.connect(":memory:") as db:
        db.executescript(schema.ddl())
        table = next(t for t in schema.tables if any(c.default for c in t.columns))
        info = {row[1]: row for row in db.execute(f"PRAGMA table_info({table.name})")}
        for column in table.columns:
            assert bool(info[column.name][3]) == (column.not_null and not column.primary_key)
            assert info[column.name][4] == column.default


def test_bad_requests_name_the_problem():
    with pytest.raises(ValueError, match="unknown domain 'zoo'"):
        generate_schema(0, "zoo")
    with pytest.raises(ValueError, match="min_tables=9"):
        generate_schema(0, "shop", min_tables=9, max_tables=9)
    with pytest.raises(KeyError, match="no table 'nope'"):
        generate_schema(0).table("nope")
