import pytest

from lib.schemas import generate_schema
from lib.sql_eval import affinity, aggregate, parses, score_schema

TRUTH = """
CREATE TABLE authors (id INTEGER PRIMARY KEY, name VARCHAR(120) NOT NULL);
CREATE TABLE books (id INTEGER PRIMARY KEY, author_id INTEGER REFERENCES authors(id), title TEXT, price DECIMAL(8,2));
"""


def test_the_truth_scores_one_everywhere():
    for seed in range(10):
        ddl = generate_schema(seed).ddl()
        score = score_schema(ddl, ddl)
        assert (score.parses, score.executes) == (True, True)
        assert score.table_f1 == score.column_f1 == score.type_accuracy == score.primary_key_f1 == score.foreign_key_f1 == 1


def test_equivalent_spelling_scores_one():
    spelled = """create table "Authors" (id int, name text not null, primary key (id));
    CREATE TABLE books (id INTEGER PRIMARY KEY, author_id INT, title VARCHAR(9), price NUMERIC,
                        FOREIGN KEY (author_id) REFERENCES authors);"""
    score = score_schema(spelled, TRUTH)
    assert score.column_f1 == score.primary_key_f1 == score.foreign_key_f1 == score.type_accuracy == 1


def test_partial_answers_score_in_between():
    missing = "CREATE TABLE books (id INTEGER PRIMARY KEY, title INTEGER, price REAL, isbn TEXT);"
    score = score_schema(missing, TRUTH)
    assert score.table_f1 == pytest.approx(2 * 1 / (1 + 2))
    assert score.column_f1 == pytest.approx(2 * 3 / (4 + 6))  # id, title, price found of 6; isbn extra
    assert score.type_accuracy == pytest.approx(1 / 3)  # id right; title TEXT->INTEGER, price NUMERIC->REAL
    assert score.primary_key_f1 == pytest.approx(2 * 1 / (1 + 2)) and score.foreign_key_f1 == 0


def test_invalid_sql_scores_zero_with_the_reason():
    broken = score_schema("CREATE TABLE books (id INTEGER PRIMARY KEY,, title TEXT", TRUTH)
    assert (broken.parses, broken.executes, broken.column_f1) == (False, False, 0)
    assert broken.error.startswith("parse:")
    rejected = score_schema("CREATE TABLE a (id INTEGER); CREATE TABLE a (id INTEGER);", TRUTH)
    assert (rejected.parses, rejected.executes) == (True, False) and "already exists" in rejected.error
    assert parses("   ") == (False, "empty SQL")
    with pytest.raises(ValueError, match="true DDL does not execute"):
        score_schema(TRUTH, "CREATE TABLE (")


def test_affinity_follows_sqlite_rules():
    assert [affinity(t) for t in ("BIGINT", "VARCHAR(20)", "CLOB", "", "DOUBLE PRECISION", "DECIMAL(10,2)", "DATE",
                                  "FLOATING POINT")] == \
        ["INTEGER", "TEXT", "TEXT", "BLOB", "REAL", "NUMERIC", "NUMERIC", "INTEGER"]  # "POINT" contains INT


def test_aggregate_means_and_valid_share():
    scores = [score_schema(TRUTH, TRUTH), score_schema("nonsense (", TRUTH)]
    summary = aggregate(scores)
    assert summary["parses"] == 0.5 and summary["column_f1"] == 0.5 and summary["type_accuracy"] == 1.0
    with pytest.raises(ValueError, match="no scores"):
        aggregate([])


def test_report_has_one_row_per_example():
    from lib.sql_eval import report

    table = report(["a", "b"], [TRUTH, "CREATE TABLE authors (id INTEGER PRIMARY KEY)"], [TRUTH, TRUTH])
    assert list(table["id"]) == ["a", "b"] and list(table["table_f1"]) == [1.0, pytest.approx(2 / 3)]
    with pytest.raises(ValueError, match="differ in length: 1, 2, 2"):
        report(["a"], [TRUTH, TRUTH], [TRUTH, TRUTH])


def test_validity_checks_without_a_truth():
    from lib.sql_eval import validity_checks

    def passed(sql):
        return [c["passed"] for c in validity_checks(sql)]

    assert passed(TRUTH) == [True] * 5
    dangling = "CREATE TABLE loans (id INTEGER PRIMARY KEY, member_id INTEGER REFERENCES members(id)); CREATE TABLE x (a TEXT);"
    checks = validity_checks(dangling)
    assert [c["passed"] for c in checks] == [True, True, True, False, False]
    assert checks[3]["detail"] == "x" and checks[4]["detail"] == "loans.member_id -> members.id"
    assert passed("CREATE TABLE (") == [False, None, None, None, None]
    assert passed("CREATE TABLE a (id INTEGER); CREATE TABLE a (id INTEGER);") == [True, False, None, None, None]
