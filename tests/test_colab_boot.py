"""A chapter boots the way Colab boots it: the notebook alone in an empty folder, its setup cell
cloning the course and installing requirements.txt, then its cells running from the clone."""

import subprocess

import jupytext
import nbformat
import papermill
import yaml

from helpers import parameters_cell
from tools.course import ROOT, chapters, repository

# On Colab `google.colab` is imported before the first cell runs; this stand-in is imported the
# same way (sitecustomize), and is all the setup cell asks of Colab.
COLAB_STAND_IN = {"google/colab/__init__.py": '"""Stands in for Colab\'s module."""\n',
                  "sitecustomize.py": "import google.colab  # as on Colab: loaded when the kernel starts\n"}


def parameters_of(source) -> dict:
    """The values of a chapter's parameters cell (literals only, as papermill requires)."""
    namespace: dict = {}
    exec(parameters_cell(source)[0], namespace)
    return {k: v for k, v in namespace.items() if not k.startswith("__")}


def git_head(folder) -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, check=True, capture_output=True,
                          text=True).stdout.strip()


def test_every_chapter_clones_the_repository_named_in_config():
    url = repository()["url"]
    assert url.startswith("https://github.com/"), f"_config.yml repository.url: {url}"
    for source in chapters():
        assert parameters_of(source)["course_repo"].removesuffix(".git") == url, source.name
    assert yaml.safe_load((ROOT / "_config.yml").read_text())["launch_buttons"]["colab_url"]


def test_chapter_00_boots_as_on_colab(tmp_path, monkeypatch):
    remote = tmp_path / "course.git"  # what GitHub serves: the committed tree
    subprocess.run(["git", "clone", "-q", "--bare", str(ROOT), str(remote)], check=True)
    stand_in = tmp_path / "colab"
    for name, text in COLAB_STAND_IN.items():
        (stand_in / name).parent.mkdir(parents=True, exist_ok=True)
        (stand_in / name).write_text(text)
    content = tmp_path / "content"  # Colab's working folder: nothing but the notebook
    content.mkdir()
    notebook = content / "00_setup.ipynb"
    jupytext.write(jupytext.read(ROOT / "chapters" / "00_setup.py"), notebook)
    pip_log = tmp_path / "pip.log"
    # The kernel sees only the stand-in (not this checkout), so lib can only come from the clone.
    monkeypatch.setenv("PYTHONPATH", str(stand_in))
    # pip resolves the clone's requirements.txt for real but installs nothing (the test's own
    # environment stays as it is); the constraints keep torch the CPU build in the resolution.
    monkeypatch.setenv("PIP_DRY_RUN", "1")
    monkeypatch.setenv("PIP_CONSTRAINT", str(ROOT / "constraints.txt"))
    monkeypatch.setenv("PIP_LOG", str(pip_log))
    executed = tmp_path / "executed.ipynb"
    papermill.execute_notebook(str(notebook), str(executed), cwd=str(content), kernel_name="python3",
                               parameters={"course_repo": remote.as_uri()}, progress_bar=False)
    clone = content / "course"
    assert git_head(clone) == git_head(ROOT)
    # pip's log (written whatever -q says): every requirement resolved from the clone's file
    assert f"(from -r {clone / 'requirements.txt'}" in pip_log.read_text()
    cells = [c for c in nbformat.read(executed, as_version=4).cells if c.cell_type == "code"]
    assert all(c.execution_count for c in cells), "a cell did not run"
