"""The Ghost Architect as a tool: screen (screenshot or visible text) -> SQLite DDL, its table and
relationship summary and its validity checks. Used by chapter 08, the Streamlit app
(`apps/ghost_architect_app.py`) and the command line:

    python -m lib.ghost_architect screenshots/               # every image in a folder (vision model)
    python -m lib.ghost_architect --text screen.txt          # visible text (text model)

Two models, loaded on first use: the text path (Gemma 3 270M + the adapter chapter 08 trains on
screen text) and the vision path (a Gemma 3 vision checkpoint + optional adapter; offline the
tiny random model, which writes noise: it proves the plumbing, not the answers).
"""

from __future__ import annotations

import argparse
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .ghost_dataset import INSTRUCTION, GhostExample, text_messages
from .precision import resolve_compute_dtype
from .sql_eval import report, structure, validity_checks

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
MAX_UPLOAD_BYTES = 10 * 2**20  # a full-page screenshot is 0.1-2 MB; larger is a mistake, not a screen
MAX_IMAGE_PIXELS = 40_000_000  # refuses decompression bombs before decoding them
_FENCE = re.compile(r"```(?:sql|sqlite)?\s*\n(.*?)(?:```|$)", re.DOTALL | re.IGNORECASE)


def extract_sql(text: str) -> str:
    """The SQL in a response: the first fenced block if there is one, else the whole text."""
    match = _FENCE.search(text)
    return (match.group(1) if match else text).strip()


def text_prompt(screen_text: str) -> list[dict]:
    """The user turn the text model was trained on, for any screen text."""
    return [{"role": "user", "content": f"{INSTRUCTION}\n\nScreen:\n{screen_text.strip()}"}]


# ------------------------------------------------------------------ what the SQL says

def schema_summary(sql: str):
    """Tables and relationships of DDL that executes, as two DataFrames:
    tables (table, columns, primary key, foreign keys) and relationships (from, to).
    Raises sqlite3.Error if the DDL does not execute (check with `validity_checks` first)."""
    import pandas as pd

    created = structure(sql)
    keys: dict[str, list[str]] = {}
    for table, column in sorted(created.primary_keys):
        keys.setdefault(table, []).append(column)
    links = sorted(created.foreign_keys)
    tables = pd.DataFrame([{"table": t, "columns": len(cols), "primary key": ", ".join(keys.get(t, [])) or "none",
                            "foreign keys": sum(1 for f in links if f[0] == t)}
                           for t, cols in sorted(created.columns.items())],
                          columns=["table", "columns", "primary key", "foreign keys"])
    relationships = pd.DataFrame([{"from": f"{t}.{c}", "to": f"{to}.{column}"} for t, c, to, column in links],
                                 columns=["from", "to"])
    return tables, relationships


# ------------------------------------------------------------------ uploads

class UploadError(ValueError):
    """An upload that is not a usable screenshot; the message says why, for the user."""


def read_upload(name: str, data: bytes, max_bytes: int = MAX_UPLOAD_BYTES):
    """The uploaded bytes as an RGB PIL image. Raises UploadError naming the file for an empty
    upload, one over `max_bytes`, or one that is not an image PIL can decode (whatever its suffix)."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise UploadError(f"{name}: the file is empty (0 bytes)")
    if len(data) > max_bytes:
        raise UploadError(f"{name}: {len(data) / 2**20:.1f} MB is over the {max_bytes / 2**20:.0f} MB limit "
                          f"for a screenshot")
    try:
        with Image.open(io.BytesIO(data)) as image:  # reads the header only; load() decodes
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise UploadError(f"{name}: {image.width} x {image.height} pixels is too large for a screenshot")
            image.load()
            return image.convert("RGB")
    except UnidentifiedImageError as error:
        raise UploadError(f"{name}: not an image (no PNG, JPEG or WebP header)") from error
    except (Image.DecompressionBombError, OSError) as error:  # truncated or corrupt, or absurdly large
        raise UploadError(f"{name}: not an image that can be decoded ({error})") from error


# ------------------------------------------------------------------ the models

@dataclass
class GhostArchitect:
    """Screen -> DDL with lazily loaded models. `text_model` / `vision_model`: embedded alias,
    folder or hub id; the adapters are peft folders (None: the base model alone)."""

    text_model: str = "gemma-3-270m"
    text_adapter: str | None = None
    vision_model: str | None = None      # None: lib.vision.default_vision_model()
    vision_adapter: str | None = None
    max_new_tokens: int = 320
    compute_dtype: str | torch.dtype = "auto"   # lib.precision's policy, or a dtype / its name
    _loaded: dict = field(default_factory=dict, repr=False)

    def text_pipeline(self):
        if "text" not in self._loaded:
            from .evaluation import load_finetuned
            from .model import load_causal_lm, load_tokenizer, resolve_model

            source = resolve_model(self.text_model)
            dtype = resolve_compute_dtype(self.compute_dtype)
            model = (load_finetuned(source, self.text_adapter, dtype) if self.text_adapter
                     else load_causal_lm(source, dtype).eval())
            self._loaded["text"] = (model, load_tokenizer(source))
        return self._loaded["text"]

    def vision_pipeline(self):
        if "vision" not in self._loaded:
            from .vision import default_vision_model, load_vision_for_inference

            name = self.vision_model or default_vision_model()
            self._loaded["vision"] = load_vision_for_inference(name, self.vision_adapter,
                                                               resolve_compute_dtype(self.compute_dtype))
        return self._loaded["vision"]

    def from_text(self, screen_texts: list[str], batch_size: int = 4) -> list[str]:
        """DDL for each screen's visible text (greedy)."""
        from .evaluation import generate

        model, tokenizer = self.text_pipeline()
        answers = generate(model, tokenizer, [text_prompt(t) for t in screen_texts], self.max_new_tokens, batch_size)
        return [extract_sql(a) for a in answers]

    def from_images(self, images: list, batch_size: int = 2) -> list[str]:
        """DDL for each screenshot (PIL images or paths), greedy."""
        from .vision import generate_ddl

        model, processor = self.vision_pipeline()
        answers = generate_ddl(model, processor, images, INSTRUCTION, self.max_new_tokens, batch_size)
        return [extract_sql(a) for a in answers]


# ------------------------------------------------------------------ evaluation (chapter 08)

def evaluate_text_model(model, tokenizer, examples: list[GhostExample], max_new_tokens: int,
                        batch_size: int = 4, adapter: bool = True):
    """Greedy DDL for each example's screen text, scored against its true DDL.

    Returns (per-example DataFrame from `lib.sql_eval.report` plus the generated SQL, seconds).
    With adapter=False a peft model runs as its base model.
    """
    import time

    from .evaluation import adapter_switch, generate

    model.eval()
    started = time.monotonic()
    with adapter_switch(model, adapter):
        answers = generate(model, tokenizer, [text_messages(e)[:1] for e in examples], max_new_tokens, batch_size)
    seconds = time.monotonic() - started
    sql = [extract_sql(a) for a in answers]
    table = report([e.id for e in examples], sql, [e.ddl for e in examples])
    return table.assign(sql=sql), seconds


# ------------------------------------------------------------------ command line

def screenshots_in(paths: list[str]) -> list[Path]:
    """Image files among `paths`, folders expanded (sorted, by suffix). Raises FileNotFoundError for
    a path that does not exist and ValueError when no image is found."""
    found = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.exists():
            found.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    if not found:
        raise ValueError(f"no {'/'.join(IMAGE_SUFFIXES)} files in {', '.join(paths)}")
    return found


def show(console, name: str, sql: str) -> bool:
    """Print one result: the SQL highlighted, the checks as a table, the tables if it executes.
    Returns whether every check passed."""
    from rich.panel import Panel
    from rich.syntax import Syntax
    from rich.table import Table

    console.print(Panel(Syntax(sql or "-- (no SQL)", "sql", word_wrap=True), title=name, expand=False))
    checks = validity_checks(sql)
    table = Table("check", "result", "detail", title="validity checks", title_justify="left")
    marks = {True: "[green]pass[/]", False: "[red]fail[/]", None: "[dim]not run[/]"}
    for check in checks:
        table.add_row(check["check"], marks[check["passed"]], check["detail"])
    console.print(table)
    if checks[1]["passed"]:
        tables, relationships = schema_summary(sql)
        summary = Table(*tables.columns, title="tables", title_justify="left")
        for row in tables.itertuples(index=False):
            summary.add_row(*map(str, row))
        console.print(summary)
        for row in relationships.itertuples(index=False):
            console.print(f"  {row[0]} -> {row[1]}")
    return all(c["passed"] for c in checks)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lib.ghost_architect", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", help="screenshots or folders of screenshots")
    parser.add_argument("--text", action="append", default=[], metavar="FILE",
                        help="a file of a screen's visible text (repeatable)")
    parser.add_argument("--text-model", default="gemma-3-270m")
    parser.add_argument("--text-adapter", help="peft adapter folder (chapter 08: output/<run>/ghost-text/adapter)")
    parser.add_argument("--vision-model", help="default: the hub 4B on a GPU, else the tiny random model")
    parser.add_argument("--vision-adapter")
    parser.add_argument("--max-new-tokens", type=int, default=320)
    args = parser.parse_args(argv)
    if not args.paths and not args.text:
        parser.error("give screenshots/folders, or --text FILE")

    from rich.console import Console

    console = Console()
    architect = GhostArchitect(args.text_model, args.text_adapter, args.vision_model, args.vision_adapter,
                               args.max_new_tokens)
    try:
        images = screenshots_in(args.paths) if args.paths else []
        texts = [Path(t).read_text(encoding="utf-8") for t in args.text]
        loaded = [read_upload(str(p), p.read_bytes()) for p in images]
    except (OSError, ValueError) as error:  # UploadError is a ValueError
        console.print(f"[red]error:[/] {error}", soft_wrap=True)
        return 2
    results = list(zip(map(str, images), architect.from_images(loaded) if loaded else []))
    results += list(zip(args.text, architect.from_text(texts) if texts else []))
    passed = [show(console, name, sql) for name, sql in results]
    console.print(f"{sum(passed)} of {len(passed)} screens gave DDL that passes every check")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
