import ast
import json
import platform

import pytest

from helpers import ROOT
from lib.stdlib_dataset import BuildConfig, assign_splits, build_stdlib_dataset

DATA = ROOT / "data" / "python-stdlib"


@pytest.fixture(scope="module")
def built():
    return build_stdlib_dataset()


def test_split_is_by_module(built):
    splits, _ = built
    modules = {name: {row["module"] for row in rows} for name, rows in splits.items()}
    assert not modules["train"] & modules["test"]
    assert not modules["train"] & modules["val"]
    assert not modules["val"] & modules["test"]


def test_responses_are_real_functions_with_the_asked_name(built):
    splits, _ = built
    for row in splits["test"]:
        tree = ast.parse(row["messages"][1]["content"])
        assert [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))] == [row["function"]]
        assert f"`def {row['function']}(" in row["messages"][0]["content"] or "`async def" in row["messages"][0]["content"]


def test_builder_is_deterministic_and_matches_committed_files(built):
    splits, report = built
    again, _ = build_stdlib_dataset()
    assert again == splits
    committed = json.loads((DATA / "build-report.json").read_text())["report"]
    if committed["python_version"] == platform.python_version():
        for name, rows in splits.items():
            lines = (DATA / f"{name}.jsonl").read_text().splitlines()
            assert [json.loads(line) for line in lines] == rows
    else:  # another Python's stdlib: the committed files stay the reference, the builder still runs
        assert sum(len(rows) for rows in splits.values()) > 300


def test_split_fractions_are_validated():
    with pytest.raises(ValueError, match="sum to 1"):
        assign_splits(["a", "b"], (0.5, 0.5, 0.5), "s")
    cut = assign_splits([f"m{i}" for i in range(100)], BuildConfig().split_fractions, "s")
    assert sorted(list(cut.values()).count(s) for s in ("train", "val", "test")) == [10, 10, 80]
