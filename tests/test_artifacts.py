"""Run artifacts and caches: atomic writes, whole-folder replacement, and a cache folder built once
even when several processes ask for it at the same time."""

import json
import multiprocessing
import time
from pathlib import Path

import pytest

from lib.artifacts import build_once, read_json, write_json


def slow_build(folder: Path) -> None:
    time.sleep(1.0)
    (folder / "config.json").write_text("{}")
    with open(folder.parent / "builds.log", "a") as log:
        log.write("built\n")


def build_in_process(target: str) -> str:
    return str(build_once(Path(target), slow_build))


def test_two_processes_build_a_cache_folder_once(tmp_path):
    target = tmp_path / "model"
    (tmp_path / ".model.building-killed").mkdir()  # left by a conversion that was killed
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        results = pool.map(build_in_process, [str(target)] * 2)
    assert results == [str(target)] * 2 and (target / "config.json").exists()
    assert (tmp_path / "builds.log").read_text() == "built\n"  # once, not twice
    assert not list(tmp_path.glob(".model.building-*"))  # the killed build's leftovers are gone


def test_a_complete_folder_is_never_rebuilt_and_an_incomplete_one_is(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "weights.bin").write_text("half written, no config.json")
    build_once(target, slow_build)
    assert (target / "config.json").exists() and not (target / "weights.bin").exists()
    marker = (target / "config.json").stat().st_mtime_ns
    build_once(target, lambda folder: (_ for _ in ()).throw(AssertionError("rebuilt")))
    assert (target / "config.json").stat().st_mtime_ns == marker


def test_atomic_json_leaves_no_temporary_file(tmp_path):
    write_json(tmp_path / "a.json", {"x": 1})
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_a_file_that_is_not_json_is_named_with_the_line_and_column(tmp_path):
    path = tmp_path / "run-spec.json"
    path.write_text('{"rank": 64,\n "alpha": }')
    with pytest.raises(json.JSONDecodeError, match=r"run-spec\.json: Expecting value: line 2 column 11"):
        read_json(path)
