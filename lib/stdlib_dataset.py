"""The default dataset: Python code instructions built from the Python standard library.

Each example pairs a documented, public, top-level stdlib function with a request to write it:

* instruction = the function's signature and what it does (its docstring, dedented);
* response    = its source code, with the docstring removed (the instruction already says it).

The code is real (written by the CPython developers, PSF License), the builder is deterministic
for a given Python version, and the split is *by module*: every function of a module lands in the
same split, so test functions come from modules the model never saw in training.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import platform
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

# Packages and modules left out: tests, IDLE and demos, platform shims, generated or vendored code.
EXCLUDED_TOP_LEVEL = {
    "test", "idlelib", "turtledemo", "lib2to3", "ensurepip", "site-packages", "__phello__",
    "distutils", "pydoc_data", "encodings", "config-3.11-x86_64-linux-gnu", "lib-dynload",
    "antigravity", "this", "__hello__",
}
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class BuildConfig:
    """Filters of the builder. Lines count the response (source without docstring)."""

    min_body_lines: int = 3
    max_body_lines: int = 30
    max_response_chars: int = 1200
    min_docstring_chars: int = 20
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: str = "stdlib-v1"


@dataclass
class BuildReport:
    """Counts of what the builder looked at and why it kept or left out each function."""

    python_version: str
    modules_scanned: int = 0
    functions_seen: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    kept: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


def stdlib_modules(root: Path | None = None) -> list[tuple[str, Path]]:
    """All pure-Python stdlib modules as (dotted name, path), sorted by name."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if rel.parts[0].removesuffix(".py") in EXCLUDED_TOP_LEVEL or rel.parts[0].startswith("_"):
            continue
        if any(part in ("tests", "test", "__pycache__") for part in rel.parts):
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found.append((".".join(parts), path))
    return found


def _strip_docstring(source_lines: list[str], node: ast.FunctionDef) -> str | None:
    """The function's source with its docstring lines removed; None if that is not clean."""
    doc_node = node.body[0]
    first = node.lineno - 1 - len(node.decorator_list)
    if node.decorator_list:
        first = node.decorator_list[0].lineno - 1
    lines = source_lines[first:node.end_lineno]
    doc_start, doc_end = doc_node.lineno - 1 - first, doc_node.end_lineno - first
    if doc_start <= node.lineno - 1 - first:  # docstring on the `def` line: no clean cut
        return None
    if len(node.body) == 1:  # only a docstring: nothing left to write
        return None
    kept = lines[:doc_start] + lines[doc_end:]
    return inspect.cleandoc("\n".join(kept)) if kept[0].startswith((" ", "\t")) else "\n".join(kept).rstrip()


def _signature(node: ast.FunctionDef) -> str:
    """The `def name(args) -> ret` header, normalised by ast.unparse onto one line."""
    returns = f" -> {ast.unparse(node.returns)}" if node.returns else ""
    prefix = "async def" if isinstance(node, ast.AsyncFunctionDef) else "def"
    return f"{prefix} {node.name}({ast.unparse(node.args)}){returns}"


def instruction_for(module: str, signature: str, docstring: str) -> str:
    """The user turn: what to write, where it lives, and what it must do."""
    return (
        f"Write the Python function `{signature}` from the `{module}` module.\n\n"
        f"What it does:\n{docstring}"
    )


def functions_of(module: str, path: Path, config: BuildConfig, report: BuildReport) -> list[dict]:
    """Examples from one module's documented public top-level functions."""
    source = path.read_text(encoding="utf-8")
    try:
        tree = ast.parse(source)
    except SyntaxError:
        report.skip("module does not parse")
        return []
    lines = source.splitlines()
    examples = []
    for node in tree.body:
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        report.functions_seen += 1
        docstring = ast.get_docstring(node)
        if node.name.startswith("_"):
            report.skip("private name")
        elif not docstring or len(docstring) < config.min_docstring_chars:
            report.skip("no docstring or docstring too short")
        elif (response := _strip_docstring(lines, node)) is None:
            report.skip("docstring not separable")
        elif not config.min_body_lines <= len(response.splitlines()) <= config.max_body_lines:
            report.skip(f"response outside {config.min_body_lines}-{config.max_body_lines} lines")
        elif len(response) > config.max_response_chars:
            report.skip(f"response over {config.max_response_chars} characters")
        else:
            signature = _signature(node)
            examples.append({
                "messages": [
                    {"role": "user", "content": instruction_for(module, signature, docstring)},
                    {"role": "assistant", "content": response},
                ],
                "module": module,
                "function": node.name,
            })
    return examples


def assign_splits(modules: list[str], fractions: tuple[float, float, float], seed: str) -> dict[str, str]:
    """Map each module to train/val/test: modules ordered by a seeded hash, cut by fraction.

    Deterministic for the same module list and seed; a module never spans two splits.
    """
    if abs(sum(fractions) - 1) > 1e-9 or min(fractions) < 0:
        raise ValueError(f"split fractions must be >= 0 and sum to 1, got {fractions}")
    ordered = sorted(modules, key=lambda m: hashlib.sha256(f"{seed}:{m}".encode()).hexdigest())
    n_train = round(fractions[0] * len(ordered))
    n_val = round(fractions[1] * len(ordered))
    names = ["train"] * n_train + ["val"] * n_val + ["test"] * (len(ordered) - n_train - n_val)
    return dict(zip(ordered, names))


def build_stdlib_dataset(config: BuildConfig = BuildConfig(), root: Path | None = None) -> tuple[dict[str, list[dict]], BuildReport]:
    """Build the three splits from the running interpreter's standard library.

    Returns ({"train": [...], "val": [...], "test": [...]}, report). Each example is
    {"messages": [user, assistant], "module", "function"}. Splits are by module, cut so that
    each split holds roughly `config.split_fractions` of the *modules that yielded examples*.
    """
    report = BuildReport(python_version=platform.python_version())
    per_module = {}
    for module, path in stdlib_modules(root):
        report.modules_scanned += 1
        if examples := functions_of(module, path, config, report):
            per_module[module] = examples
    split_of = assign_splits(list(per_module), config.split_fractions, config.seed)
    splits: dict[str, list[dict]] = {name: [] for name in SPLITS}
    for module in sorted(per_module):
        splits[split_of[module]].extend(per_module[module])
    report.kept = {name: len(rows) for name, rows in splits.items()}
    return splits, report


def write_dataset(folder: str | Path, config: BuildConfig = BuildConfig()) -> BuildReport:
    """Build and write train/val/test.jsonl, build-report.json and a README into `folder`."""
    from .artifacts import atomic_write_text, write_json, write_jsonl

    folder = Path(folder)
    splits, report = build_stdlib_dataset(config)
    for name, rows in splits.items():
        write_jsonl(folder / f"{name}.jsonl", rows)
    write_json(folder / "build-report.json", {"config": config.__dict__, "report": report.__dict__})
    skipped = "\n".join(f"| {reason} | {n} |" for reason, n in sorted(report.skipped.items()))
    atomic_write_text(folder / "README.md", f"""# Python standard library code instructions

Built by `python -m lib.stdlib_dataset {folder}` from the standard library of
Python {report.python_version} (`lib/stdlib_dataset.py`; deterministic for that version).

Each record is a `messages` conversation: the user asks for a function by its signature, module
and docstring; the assistant answers with the function's source, docstring removed. Records also
carry `module` and `function`.

## Counts

| split | examples |
|---|---|
| train | {report.kept['train']} |
| val | {report.kept['val']} |
| test | {report.kept['test']} |

{report.modules_scanned} modules scanned, {report.functions_seen} top-level functions seen. Left out:

| reason | functions |
|---|---|
{skipped}

## Filters
Public (no leading underscore), top-level functions with a docstring of at least
{config.min_docstring_chars} characters, whose source without docstring has
{config.min_body_lines}-{config.max_body_lines} lines and at most {config.max_response_chars}
characters. Left out as packages: {', '.join(sorted(EXCLUDED_TOP_LEVEL))}, private modules and
test folders.

## Split
By module: modules are ordered by SHA-256 of "{config.seed}:<module>" and cut
{config.split_fractions[0]:.0%} / {config.split_fractions[1]:.0%} / {config.split_fractions[2]:.0%}, so
every function of a module is in one split and test modules are never seen in training.

## License
The code is from CPython's standard library, Copyright Python Software Foundation, under the
PSF License Agreement (https://docs.python.org/3/license.html).
""")
    return report


if __name__ == "__main__":
    import sys

    print(write_dataset(sys.argv[1] if len(sys.argv) > 1 else "data/python-stdlib"))
