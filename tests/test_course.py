"""tools.course: the chapters' order and their concurrent execution (the chapters themselves are
faked here; tests/test_chapters.py runs the real ones), and the notebooks published for Colab."""

import json
import subprocess
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


def test_the_notebooks_are_published_whole_as_the_branch_colab_opens(tmp_path):
    """What the book's Colab buttons open: every chapter of _toc.yml as a notebook on the branch
    `repository.branch`, replaced whole by each publish (`publish_notebooks`, through ghp-import)."""
    def git(*args, cwd=tmp_path):
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout

    remote, work, folder = tmp_path / "remote.git", tmp_path / "work", tmp_path / "notebooks"
    git("init", "-q", "--bare", str(remote))
    git("init", "-q", str(work))
    for key, value in (("user.name", "Course"), ("user.email", "course@example.org")):
        git("config", key, value, cwd=work)
    git("commit", "-q", "--allow-empty", "-m", "start", cwd=work)
    retired = folder / "chapters" / "99_retired.ipynb"  # a chapter of an earlier _toc.yml
    retired.parent.mkdir(parents=True)
    retired.write_text("{}")
    tools.course.publish_notebooks(folder, str(remote), repo=work)
    retired.unlink()
    tools.course.write_notebooks(folder)
    tools.course.publish_notebooks(folder, str(remote), repo=work)
    branch = tools.course.repository()["branch"]
    on_branch = git("--git-dir", str(remote), "ls-tree", "-r", "--name-only", branch).split()
    assert on_branch == sorted(f"chapters/{source.stem}.ipynb" for source in chapters())
    notebook = json.loads(git("--git-dir", str(remote), "show", f"{branch}:chapters/00_setup.ipynb"))
    assert any("parameters" in cell["metadata"].get("tags", []) for cell in notebook["cells"])
