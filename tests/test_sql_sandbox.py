"""Model-written SQL runs confined (lib.sql_sandbox): one test per way an answer broke out or broke
the scorer when it ran in a plain in-memory SQLite."""

import time

import pytest

from lib.sql_eval import report, score_schema, validity_checks

TRUTH = "CREATE TABLE authors (id INTEGER PRIMARY KEY, name TEXT NOT NULL);"


def test_attach_and_vacuum_into_write_no_file(tmp_path):
    for sql in (f"ATTACH DATABASE '{tmp_path / 'a.db'}' AS x; CREATE TABLE x.t (id INTEGER);",
                f"CREATE TABLE t (id INTEGER); VACUUM INTO '{tmp_path / 'b.db'}';"):
        score = score_schema(sql, TRUTH)
        assert (score.parses, score.executes) == (True, False) and "ATTACH is refused" in score.error, score.error
    assert list(tmp_path.iterdir()) == []


def test_no_state_carries_from_one_answer_to_the_next():
    table = report(["a", "b"], [TRUTH, TRUTH], [TRUTH, TRUTH])
    assert list(table["executes"]) == [True, True] and list(table["table_f1"]) == [1.0, 1.0]


def test_a_recursive_query_that_never_ends_is_stopped():
    forever = "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT count(*) FROM n;"
    started = time.monotonic()
    score = score_schema(TRUTH + forever, TRUTH)
    assert time.monotonic() - started < 10
    assert score.executes is False and "time budget" in score.error


def test_a_script_cannot_grow_the_database_without_bound():
    grow = ("CREATE TABLE big AS WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n LIMIT 5000000) "
            "SELECT x, printf('%.500c', 'x') AS pad FROM n;")
    score = score_schema(grow, TRUTH)
    assert score.executes is False and "full" in score.error, score.error


def test_pragmas_of_the_script_are_refused():
    score = score_schema("PRAGMA max_page_count = 2147483647; " + TRUTH, TRUTH)
    assert score.executes is False and "not authorized" in score.error


def test_deep_nesting_is_a_parse_failure_not_an_exception():
    nested = "CREATE TABLE t (x INTEGER DEFAULT " + "(" * 60 + "1" + ")" * 60 + ");"
    score = score_schema(nested, TRUTH)
    assert (score.parses, score.executes) == (False, False) and "nested too deeply" in score.error
    table = report(["deep", "fine"], [nested, TRUTH], [TRUTH, TRUTH])  # the report goes on
    assert list(table["parses"]) == [False, True]


def test_nesting_up_to_the_limit_parses():
    from lib.sql_eval import MAX_NESTING, nesting_depth, parses

    sql = "CREATE TABLE t (x INTEGER DEFAULT " + "(" * (MAX_NESTING - 1) + "1" + ")" * (MAX_NESTING - 1) + ");"
    assert nesting_depth(sql) == MAX_NESTING and parses(sql) == (True, None)
    assert nesting_depth("SELECT '(((((' -- ((((\n") == 0


def test_a_lone_surrogate_is_a_failure_with_its_reason():
    score = score_schema("CREATE TABLE t (name TEXT DEFAULT '\ud800');", TRUTH)
    assert score.parses is False and "UTF-8" in score.error
    checks = validity_checks("CREATE TABLE t (name TEXT DEFAULT '\ud800');")
    assert checks[0]["passed"] is False and "UTF-8" in checks[0]["detail"]


@pytest.mark.parametrize("sql", ["", "SELECT 1;" * 30_000])
def test_empty_and_oversized_answers_are_scored(sql):
    score = score_schema(sql, TRUTH)
    assert score.parses is False and score.error
