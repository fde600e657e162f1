"""Scoring generated DDL against the true schema (chapter 08): parse, execute, compare structure.

For a generated SQL text: does it parse (sqlglot, SQLite dialect), does it execute in an empty
in-memory SQLite database, and how close is the schema it creates to the truth? Both sides are
read back from SQLite itself (PRAGMA table_info / foreign_key_list), so equivalent spellings
(inline or table-level keys, quoting, case) count the same. Names compare case-insensitively.

    table F1        over table names
    column F1       over (table, column) pairs
    type accuracy   over the columns found in both: same SQLite type affinity
                    (https://www.sqlite.org/datatype3.html, section 3.1)
    primary-key F1  over (table, column) pairs of primary keys
    foreign-key F1  over (table, column, referenced table, referenced column)

F1 = 2 |P & T| / (|P| + |T|), 1.0 when both sets are empty.
"""

from __future__ import annotations

import sqlite3
from dataclasses import asdict, dataclass, fields

from .sql_sandbox import UnsafeSQL, check_text, run_untrusted, sandbox

# sqlglot parses by recursive descent, about 20 Python frames per parenthesis: where ~50 levels
# exhaust the stack depends on how deep the caller already is. No schema needs more than a few.
MAX_NESTING = 32


def affinity(declared_type: str) -> str:
    """SQLite's column affinity of a declared type: INTEGER, TEXT, BLOB, REAL or NUMERIC.

    The rules of https://www.sqlite.org/datatype3.html section 3.1, in their order.
    """
    t = declared_type.upper()
    if "INT" in t:
        return "INTEGER"
    if any(s in t for s in ("CHAR", "CLOB", "TEXT")):
        return "TEXT"
    if "BLOB" in t or not t.strip():
        return "BLOB"
    if any(s in t for s in ("REAL", "FLOA", "DOUB")):
        return "REAL"
    return "NUMERIC"


@dataclass
class Structure:
    """What a DDL script creates: {table: {column: declared type}}, primary keys, foreign keys."""

    columns: dict[str, dict[str, str]]
    primary_keys: set[tuple[str, str]]
    foreign_keys: set[tuple[str, str, str, str]]


def structure(sql: str) -> Structure:
    """Execute `sql` in an empty, confined in-memory SQLite database (`lib.sql_sandbox`) and read
    the schema back.

    Raises sqlite3.Error when SQLite rejects the script or the sandbox stops it (disk access,
    PRAGMA, time budget, size cap, text that is not UTF-8).
    """
    with sandbox() as db:
        run_untrusted(db, sql)
        names = [row[0] for row in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
        columns, primary, foreign = {}, set(), set()
        for name in names:
            table = name.lower()
            quoted = '"' + name.replace('"', '""') + '"'
            info = db.execute(f"PRAGMA table_info({quoted})").fetchall()  # cid, name, type, notnull, default, pk
            columns[table] = {row[1].lower(): row[2] for row in info}
            primary |= {(table, row[1].lower()) for row in info if row[5]}
            for row in db.execute(f"PRAGMA foreign_key_list({quoted})").fetchall():  # id, seq, table, from, to
                foreign.add((table, row[3].lower(), row[2].lower(), (row[4] or "").lower()))
    # "REFERENCES t" without a column means t's primary key
    keys = {t: sorted(c for tt, c in primary if tt == t) for t in columns}
    foreign = {(t, c, to, column or ",".join(keys.get(to, []))) for t, c, to, column in foreign}
    return Structure(columns, primary, foreign)


def f1(predicted: set, truth: set) -> float:
    """F1 of a predicted set against the true one, 0..1; 1.0 when both are empty."""
    if not predicted and not truth:
        return 1.0
    return 2 * len(predicted & truth) / (len(predicted) + len(truth))


@dataclass
class SchemaScore:
    parses: bool
    executes: bool
    table_f1: float
    column_f1: float
    type_accuracy: float | None  # None when no column was found in both
    primary_key_f1: float
    foreign_key_f1: float
    error: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def parses(sql: str) -> tuple[bool, str | None]:
    """(True, None) if sqlglot parses `sql` as SQLite statements, else (False, the parse error)."""
    import sqlglot
    from sqlglot.errors import ParseError, TokenError

    if not sql.strip():
        return False, "empty SQL"
    try:
        check_text(sql)
        if (depth := nesting_depth(sql)) > MAX_NESTING:
            return False, f"nested too deeply for the parser: {depth} levels of parentheses, over {MAX_NESTING}"
        statements = [s for s in sqlglot.parse(sql, read="sqlite") if s is not None]
    except (ParseError, TokenError, UnsafeSQL) as error:
        return False, str(error).splitlines()[0]
    except RecursionError:  # a recursive descent: its depth limit is Python's stack, not ours
        return False, "nested too deeply for the parser"
    return (True, None) if statements else (False, "no SQL statement")


def nesting_depth(sql: str) -> int:
    """The deepest parenthesis nesting of `sql`, from sqlglot's tokens (quotes and comments skip)."""
    import sqlglot
    from sqlglot.tokens import TokenType

    depth = deepest = 0
    for token in sqlglot.Dialect.get_or_raise("sqlite").tokenize(sql):
        depth += (token.token_type == TokenType.L_PAREN) - (token.token_type == TokenType.R_PAREN)
        deepest = max(deepest, depth)
    return deepest


def score_schema(predicted_sql: str, truth_sql: str) -> SchemaScore:
    """Score generated DDL against the true DDL (see the module docstring).

    A text that does not parse or execute scores 0 everywhere (type accuracy None). The truth must
    execute: raises ValueError naming SQLite's error otherwise.
    """
    try:
        truth = structure(truth_sql)
    except sqlite3.Error as error:
        raise ValueError(f"the true DDL does not execute in SQLite: {error}") from error
    ok, error = parses(predicted_sql)
    if ok:
        try:
            predicted = structure(predicted_sql)
        except sqlite3.Error as sqlite_error:
            return SchemaScore(True, False, 0.0, 0.0, None, 0.0, 0.0, f"sqlite: {sqlite_error}")
    else:
        return SchemaScore(False, False, 0.0, 0.0, None, 0.0, 0.0, f"parse: {error}")
    predicted_columns = {(t, c) for t, cols in predicted.columns.items() for c in cols}
    truth_columns = {(t, c) for t, cols in truth.columns.items() for c in cols}
    both = predicted_columns & truth_columns
    same_type = sum(affinity(predicted.columns[t][c]) == affinity(truth.columns[t][c]) for t, c in both)
    return SchemaScore(True, True, f1(set(predicted.columns), set(truth.columns)), f1(predicted_columns, truth_columns),
                       same_type / len(both) if both else None, f1(predicted.primary_keys, truth.primary_keys),
                       f1(predicted.foreign_keys, truth.foreign_keys))


def aggregate(scores: list[SchemaScore]) -> dict[str, float]:
    """Means over examples (type accuracy over those that have one), and the share valid."""
    if not scores:
        raise ValueError("no scores to aggregate")
    n = len(scores)
    typed = [s.type_accuracy for s in scores if s.type_accuracy is not None]
    return {"examples": n, "parses": sum(s.parses for s in scores) / n, "executes": sum(s.executes for s in scores) / n,
            "table_f1": sum(s.table_f1 for s in scores) / n, "column_f1": sum(s.column_f1 for s in scores) / n,
            "type_accuracy": sum(typed) / len(typed) if typed else None,
            "primary_key_f1": sum(s.primary_key_f1 for s in scores) / n,
            "foreign_key_f1": sum(s.foreign_key_f1 for s in scores) / n}


def report(ids: list[str], predicted: list[str], truths: list[str]):
    """Per-example scores as a DataFrame (one row per id, the columns of SchemaScore).

    Raises ValueError when the three lists differ in length.
    """
    import pandas as pd

    if not len(ids) == len(predicted) == len(truths):
        raise ValueError(f"ids, predicted and truths differ in length: {len(ids)}, {len(predicted)}, {len(truths)}")
    return pd.DataFrame([{"id": i, **score_schema(p, t).to_dict()} for i, p, t in zip(ids, predicted, truths)])


def aggregate_report(table) -> dict[str, float]:
    """`aggregate` over the rows of a `report` DataFrame (pandas' NaN read back as None)."""
    import pandas as pd

    names = [f.name for f in fields(SchemaScore)]
    rows = [{k: (None if pd.isna(row[k]) else row[k]) for k in names} for row in table.to_dict("records")]
    return aggregate([SchemaScore(**row) for row in rows])


def validity_checks(sql: str) -> list[dict]:
    """Checks of generated DDL with no truth to compare with (what the app and the CLI show).

    Rows {"check", "passed", "detail"}: it parses, it executes in SQLite, it creates at least one
    table, every table has a primary key, every foreign key points to a table and column it
    created. Checks after a failed parse or execution are reported as not run (passed None).
    """
    ok, error = parses(sql)
    checks = [{"check": "parses (sqlglot, SQLite)", "passed": ok, "detail": error or ""}]
    created = None
    if ok:
        try:
            created = structure(sql)
            checks.append({"check": "executes in SQLite", "passed": True, "detail": ""})
        except sqlite3.Error as sqlite_error:
            checks.append({"check": "executes in SQLite", "passed": False, "detail": str(sqlite_error)})
    else:
        checks.append({"check": "executes in SQLite", "passed": None, "detail": "not run"})
    later = ("creates tables", "every table has a primary key", "foreign keys point to created columns")
    if created is None:
        return checks + [{"check": name, "passed": None, "detail": "not run"} for name in later]
    keyed = {t for t, _ in created.primary_keys}
    dangling = sorted(f"{t}.{c} -> {to}.{column}" for t, c, to, column in created.foreign_keys
                      if column not in created.columns.get(to, {}))
    return checks + [
        {"check": later[0], "passed": bool(created.columns), "detail": ", ".join(sorted(created.columns))},
        {"check": later[1], "passed": keyed >= set(created.columns),
         "detail": ", ".join(sorted(set(created.columns) - keyed))},
        {"check": later[2], "passed": not dangling, "detail": "; ".join(dangling)}]
