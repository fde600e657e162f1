"""tools.course: the chapters' order and their concurrent execution (the chapters themselves are
faked here; tests/test_chapters.py runs the real ones)."""

import threading
import time

import papermill
import pytest

import tools.course
from tools.course import PREREQUISITES, chapter_parameters, chapters, declared_parameters, execute_concurrently
from helpers import ROOT


def test_book_order_runs_every_prerequisite_first():
    order = [source.stem for source in chapters()]
    for chapter, needs in PREREQUISITES.items():
        assert chapter in order, f"PREREQUISITES names {chapter}, which _toc.yml does not list"
        for need in needs:
            assert need in order and order.index(need) < order.index(chapter), f"{chapter} needs {need} first"


def test_a_chapter_s_own_parameters_win_over_every_chapter_s():
    values = {"*": {"run_name": "smoke", "max_seq_length": 256}, "11_scale_out": {"max_seq_length": 128}}
    assert chapter_parameters(values, "11_scale_out") == {"run_name": "smoke", "max_seq_length": 128}
    assert chapter_parameters(values, "03_data") == {"run_name": "smoke", "max_seq_length": 256}
    assert chapter_parameters(None, "03_data") == {}
    # "*" values reach only the chapters that have the parameter (chapter 06 has no max_seq_length)
    declared = declared_parameters(ROOT / "chapters" / "06_evaluate.py")
    assert "run_name" in declared and "max_seq_length" not in declared
    assert chapter_parameters(values, "06_evaluate", declared) == {"run_name": "smoke"}
    assert chapter_parameters(values | {"06_evaluate": {"typo": 1}}, "06_evaluate", declared)["typo"] == 1


def fake_chapters(monkeypatch, fail=()):
    """execute_chapter replaced by a 20 ms sleep that records (chapter, start, end, parameters)."""
    runs, lock = [], threading.Lock()

    def execute(source, output, parameters=None):
        started = time.monotonic()
        time.sleep(0.02)
        with lock:
            runs.append((source.stem, started, time.monotonic(), parameters))
        if source.stem in fail:
            raise papermill.PapermillExecutionError(0, 1, "x = 1 / 0", "ZeroDivisionError", "division by zero", [])
        return 0.02

    monkeypatch.setattr(tools.course, "execute_chapter", execute)
    return runs


@pytest.mark.parametrize("workers", [1, 2, 4])
def test_chapters_run_at_once_only_after_what_they_read(monkeypatch, tmp_path, workers):
    runs = fake_chapters(monkeypatch)
    seconds = execute_concurrently(tmp_path, {"*": {"run_name": "smoke"}}, workers=workers)
    assert list(seconds) == [source.stem for source in chapters()]
    ended = {stem: end for stem, _, end, _ in runs}
    has_run_name = {source.stem: "run_name" in declared_parameters(source) for source in chapters()}
    assert not all(has_run_name.values())  # 00_setup has none: it gets no "*" value
    for stem, started, _, parameters in runs:
        assert parameters == ({"run_name": "smoke"} if has_run_name[stem] else {})
        assert all(ended[need] <= started for need in PREREQUISITES.get(stem, ())), f"{stem} started too early"
    if workers > 1:  # some chapters overlapped
        assert any(a[1] < b[2] and b[1] < a[2] for a in runs for b in runs if a is not b)


def test_a_failed_chapter_stops_those_that_read_it_and_is_raised(monkeypatch, tmp_path):
    runs = fake_chapters(monkeypatch, fail={"04_trinity_training"})
    with pytest.raises(papermill.PapermillExecutionError) as raised:
        execute_concurrently(tmp_path, workers=2)
    assert raised.value.ename == "ZeroDivisionError"
    ran = {stem for stem, *_ in runs}
    dependents = {c for c, needs in PREREQUISITES.items() if "04_trinity_training" in needs}
    assert "04_trinity_training" in ran and not ran & dependents
    assert "11_scale_out" in ran  # chapters that do not read it still run
