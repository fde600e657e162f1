"""Every parameter a chapter offers is used, and every smoke parameter the tests pass exists.

A static check (the chapters' code is parsed, not run): a parameter that no later cell reads
cannot act, and a smoke parameter a chapter lacks would be ignored silently by papermill."""

import ast

import pytest

from helpers import parameters_cell
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


def test_the_check_finds_an_unread_parameter(tmp_path):
    chapter = tmp_path / "99_example.py"
    chapter.write_text('# %% tags=["parameters"]\nrank = 64\nunused_knob = 3\n\n# %%\nprint(rank)\n')
    with pytest.raises(AssertionError, match="unused_knob"):
        test_every_parameter_is_read_by_a_later_cell(chapter)
