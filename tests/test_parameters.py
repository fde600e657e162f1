"""Every parameter a chapter offers is used, and every smoke parameter the tests pass exists.

A static check (the chapters' code is parsed, not run): a parameter that no later cell reads
cannot act, and a smoke parameter a chapter lacks would be ignored silently by papermill."""

import ast
import re
from pathlib import Path

import pytest

from helpers import ROOT, parameters_cell
from parameter_probes import COLAB_ONLY
from tools.course import SMOKE_PARAMETERS, chapters


def split(source):
    """(parameter names in order, the code of every later code cell) of a chapter."""
    cell, later_cells = parameters_cell(source)
    tree = ast.parse(cell)
    for node in tree.body:  # papermill replaces the cell by literal assignments: nothing else may be in it
        assert isinstance(node, ast.Assign) and isinstance(node.value, (ast.Constant, ast.List, ast.Tuple, ast.Dict,
                                                                          ast.UnaryOp)), \
            f"{source.name}: line {node.lineno} of the parameters cell is not a literal assignment"
    names = [target.id for node in tree.body for target in node.targets]
    later = "\n".join(later_cells)
    return names, ast.parse("\n".join(l for l in later.splitlines() if not l.lstrip().startswith(("%", "!"))))


@pytest.mark.parametrize("source", chapters(), ids=lambda s: s.stem)
def test_every_parameter_is_read_by_a_later_cell(source):
    names, code = split(source)
    read = {node.id for node in ast.walk(code) if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)}
    unused = [name for name in names if name not in read]
    assert not unused, f"{source.name}: parameters no cell reads (they cannot act): {unused}"
    assert len(names) == len(set(names)), f"{source.name}: a parameter is set twice"


@pytest.mark.parametrize("source", chapters(), ids=lambda s: s.stem)
def test_smoke_parameters_name_real_parameters(source):
    names, _ = split(source)
    unknown = sorted(set(SMOKE_PARAMETERS.get(source.stem, {})) - set(names))
    assert not unknown, f"{source.stem}: SMOKE_PARAMETERS sets {unknown}, which the chapter does not have"


@pytest.mark.parametrize("source", chapters(), ids=lambda s: s.stem)
def test_papermill_reads_every_parameter(source):
    """papermill parses the cell line by line (its inspection, the names `-p` accepts); a line it
    cannot parse (an "=" in a comment did) makes it warn "unknown parameter" for a real one."""
    import nbformat
    from papermill.translators import PythonTranslator

    names, _ = split(source)
    cell, _ = parameters_cell(source)
    assert [p.name for p in PythonTranslator.inspect(nbformat.v4.new_code_cell(cell))] == names


def test_the_check_finds_an_unread_parameter(tmp_path):
    chapter = tmp_path / "99_example.py"
    chapter.write_text('# %% tags=["parameters"]\nrank = 64\nunused_knob = 3\n\n# %%\nprint(rank)\n')
    with pytest.raises(AssertionError, match="unused_knob"):
        test_every_parameter_is_read_by_a_later_cell(chapter)


# ------------------------------------------------------------------ dynamic: a changed value changes what the chapter shows

# Chapters cheap enough to run once per parameter: a builder each, run only for its own chapter,
# of (the values every run starts from, beyond the defaults; the changed values). Every parameter
# must be listed (or in COLAB_ONLY), so a new one cannot slip past. The training chapters: by
# probes of their smoke runs (tests/parameter_probes.py, run by tests/test_chapters.py).
def setup_changes(tmp_path):
    return {}, {"backend": "peft", "compute_dtype": "float32"}


def memory_budget_changes(tmp_path):
    """The runs start from the tiny Gemma (chapter 02 loads its model in bfloat16, as on a GPU:
    on a CPU without native bfloat16 the 270M took about 25 s a run); `model_name` changes to the
    course's 270M."""
    from helpers import make_tiny_gemma
    from lib.artifacts import read_json, write_json

    grid = read_json("data/measurements/gpu-memory-grid.json")
    other = tmp_path / "grid-other.json"  # the same points, as if measured 5% higher (the claims need every point)
    write_json(other, grid | {"rows": [r | {"peak_allocated_gib": 1.05 * r["peak_allocated_gib"]} if "peak_allocated_gib"
                                       in r else r for r in grid["rows"]]})
    return {"model_name": str(make_tiny_gemma(tmp_path / "tiny-gemma"))}, {
        "model_name": "gemma-3-270m", "run_name": "other", "output_dir": str(tmp_path / "elsewhere"),
        "sizes": ["1B", "12B"], "max_seq_length": 2048, "rank": 16, "gpus": ["T4", "L4"], "measurements": str(other)}


def data_changes(tmp_path):
    from helpers import make_tiny_gemma_with_system_prompt

    fewer = tmp_path / "python-stdlib-fewer"  # the course's dataset less its last 100 training records
    fewer.mkdir()
    for split in ("train", "val", "test"):
        lines = (ROOT / "data" / "python-stdlib" / f"{split}.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
        (fewer / f"{split}.jsonl").write_text("".join(lines[:-100] if split == "train" else lines), encoding="utf-8")
    return {}, {"model_name": str(make_tiny_gemma_with_system_prompt(tmp_path / "tiny-gemma-system")),
                "dataset_dir": str(fewer), "run_name": "other", "output_dir": str(tmp_path / "elsewhere"),
                "max_seq_length": 256}


CHANGED_VALUES = {"00_setup": setup_changes, "02_memory_budget": memory_budget_changes, "03_data": data_changes}


def test_every_chapter_has_its_parameters_changed_by_a_test():
    """One run per parameter here, or probes of the smoke runs: no chapter is checked statically only."""
    from parameter_probes import PROBES

    unchanged = [s.stem for s in chapters() if s.stem not in set(CHANGED_VALUES) | set(PROBES)]
    assert not unchanged, f"no test changes the parameters of {unchanged}"




# Parts of an output that change from run to run whatever the parameters: pandas Styler's table
# ids, object addresses in reprs, and the timestamp and process id of a logged warning line.
VOLATILE = re.compile(r"T_[0-9a-f]{5}|0x[0-9a-f]+|^[WIEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ ", re.MULTILINE)


def observed(notebook_path, output_dir):
    """What a reader or a later chapter can see: each code cell's outputs (text and images, with the
    VOLATILE parts removed) and the files the run wrote (absolute paths and sizes)."""
    import nbformat

    notebook = nbformat.read(notebook_path, as_version=4)
    cells = []
    for cell in notebook.cells:
        if cell.cell_type == "code" and "parameters" not in cell.metadata.get("tags", []):
            shown = []
            for output in cell.get("outputs", []):
                shown.append(output.get("text", "") + "".join(str(v) for v in output.get("data", {}).values()))
            cells.append(VOLATILE.sub("", "\n".join(shown)))
    files = sorted((str(p), p.stat().st_size) for p in Path(output_dir).rglob("*") if p.is_file())
    return cells, files


@pytest.mark.parametrize("stem", CHANGED_VALUES)
def test_changing_each_parameter_changes_what_the_chapter_shows(stem, tmp_path):
    from tools.course import ROOT, execute_chapter

    source = ROOT / "chapters" / f"{stem}.py"
    names, _ = split(source)
    start, changes = CHANGED_VALUES[stem](tmp_path)
    assert set(changes) | COLAB_ONLY == set(names), f"{stem}: list a changed value for {set(names) - set(changes)}"
    assert all(changes[name] != value for name, value in start.items()), f"{stem}: a change to the starting value"
    base = ({"output_dir": str(tmp_path / "output")} if "output_dir" in names else {}) | start

    def run(label, parameters):
        executed = tmp_path / f"{label}.ipynb"
        execute_chapter(source, executed, parameters)
        return observed(executed, parameters.get("output_dir", tmp_path / "output"))

    first, again = run("base", base), run("base-again", base)
    # Cells whose outputs differ between two identical runs (timings, RSS) say nothing about a parameter.
    noisy = {i for i, (a, b) in enumerate(zip(first[0], again[0])) if a != b}
    steady = lambda seen: ([c for i, c in enumerate(seen[0]) if i not in noisy], [f for f, _ in seen[1]])
    assert len(noisy) < len(first[0]) / 2, f"{stem}: most cells differ between identical runs"
    inert = [name for name, value in changes.items() if steady(run(name, base | {name: value})) == steady(first)]
    assert not inert, f"{stem}: changing {inert} changed no output and no written file"
