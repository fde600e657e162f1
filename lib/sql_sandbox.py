"""Running model-written SQL safely: a fresh in-memory SQLite database that cannot touch the disk,
keep state between calls, grow without bound or run forever.

Generated SQL is untrusted input. Tried on the plain `sqlite3.connect(":memory:")`:
`ATTACH DATABASE 'x.db'` and `VACUUM INTO 'x.db'` create files on disk (and an attached file
keeps one answer's tables for the next), a `WITH RECURSIVE` without an end never returns, and
`PRAGMA max_page_count` would lift any size cap. Here every call gets its own connection with:

* attached databases limited to 0 (`SQLITE_LIMIT_ATTACHED`: ATTACH and VACUUM INTO both need
  one) and an authorizer that also denies ATTACH, DETACH and every PRAGMA of the script;
* temporary storage in memory and `max_page_count` capping the database size;
* a time budget checked by a progress handler every 1,000 virtual-machine instructions;
* limits on statement length and expression depth.

(https://www.sqlite.org/c3ref/limit.html, /c3ref/set_authorizer.html, /c3ref/progress_handler.html)
A violation raises `sqlite3.Error` like any rejected SQL, and `UnsafeSQL` (a sqlite3.Error)
where the text cannot be handed to SQLite at all (a lone surrogate is not UTF-8).
"""

from __future__ import annotations

import sqlite3
import time
from contextlib import contextmanager

TIME_BUDGET_S = 2.0                 # a DDL script runs in milliseconds
MAX_PAGES = 2560                    # x 4 KiB pages = 10 MiB: far above any schema
MAX_SQL_CHARS = 200_000
MAX_EXPRESSION_DEPTH = 200
_DENIED = {sqlite3.SQLITE_ATTACH: "ATTACH", sqlite3.SQLITE_DETACH: "DETACH", sqlite3.SQLITE_PRAGMA: "PRAGMA"}


class UnsafeSQL(sqlite3.Error):
    """SQL that cannot be handed to SQLite (not encodable as UTF-8, too long)."""


def check_text(sql: str) -> None:
    """Raise UnsafeSQL for text SQLite cannot take: over MAX_SQL_CHARS, or with a lone surrogate."""
    if len(sql) > MAX_SQL_CHARS:
        raise UnsafeSQL(f"{len(sql):,} characters is over the {MAX_SQL_CHARS:,} allowed")
    try:
        sql.encode("utf-8")
    except UnicodeEncodeError as error:
        raise UnsafeSQL(f"not valid UTF-8: {error.reason} at character {error.start}") from error


@contextmanager
def sandbox(max_pages: int = MAX_PAGES):
    """A fresh, confined in-memory database for one script; closed on exit.

    The restrictions of the module docstring hold while `run_untrusted` runs a script; the
    course's own queries afterwards (PRAGMA table_info ...) run without the authorizer.
    """
    db = sqlite3.connect(":memory:", isolation_level=None)
    try:
        db.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
        db.setlimit(sqlite3.SQLITE_LIMIT_SQL_LENGTH, MAX_SQL_CHARS * 4)
        db.setlimit(sqlite3.SQLITE_LIMIT_EXPR_DEPTH, MAX_EXPRESSION_DEPTH)
        db.execute("PRAGMA temp_store = MEMORY")
        db.execute(f"PRAGMA max_page_count = {int(max_pages)}")
        yield db
    finally:
        db.close()


def run_untrusted(db: sqlite3.Connection, sql: str, time_budget_s: float = TIME_BUDGET_S) -> None:
    """Execute the script `sql` in a `sandbox` connection under its restrictions.

    Raises UnsafeSQL (see `check_text`) or sqlite3.Error: SQLite's own errors, "not authorized"
    for ATTACH/DETACH/PRAGMA, "interrupted" past the time budget, "database or disk is full" past
    the size cap.
    """
    check_text(sql)
    deadline = time.monotonic() + time_budget_s
    denied = []

    def authorizer(action, *_):
        if action in _DENIED:
            denied.append(_DENIED[action])
            return sqlite3.SQLITE_DENY
        return sqlite3.SQLITE_OK

    db.set_authorizer(authorizer)
    db.set_progress_handler(lambda: int(time.monotonic() > deadline), 1000)
    try:
        db.executescript(sql)
    except sqlite3.DatabaseError as error:
        if str(error) == "interrupted":
            raise sqlite3.OperationalError(f"interrupted: over the {time_budget_s:g} s time budget") from error
        if denied:  # SQLite says "not authorized" or "authorization denied"
            raise sqlite3.OperationalError(f"{error}: {denied[-1]} is refused in the sandbox") from error
        raise
    finally:
        db.set_authorizer(None)
        db.set_progress_handler(None, 0)
