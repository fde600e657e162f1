"""The Ghost Architect as a tool: screen (screenshot or visible text) -> SQLite DDL, its table and
relationship summary and its validity checks. Used by chapter 08, the Streamlit app
(`apps/ghost_architect_app.py`) and the command line:

    python -m lib.ghost_architect screenshots/ --text-adapter output/default/ghost-ocr/adapter
    python -m lib.ghost_architect --text screen.txt --text-adapter ...

Two paths from a screenshot, each loaded on first use:

* **OCR + text model** (the default): the pixels are read by OCR and layout analysis
  (`lib.screen_layout.read_screen`) into screen text, which the text model (Gemma 3 270M plus
  the adapter chapter 08 trains on OCR'd screens) turns into DDL. Runs on any CPU, offline.
* **vision model**, when `vision_model` names a checkpoint (a Gemma 3 vision model + its
  adapter, on a GPU; `lib.vision.TINY_RANDOM` is the random stand-in that demonstrates the path
  and writes noise).

Every answer says which path wrote it. Generated SQL is only ever executed in the sandbox of
`lib.sql_sandbox` (through `lib.sql_eval`).
"""

from __future__ import annotations

import argparse
import io
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .ghost_dataset import INSTRUCTION, GhostExample
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
    """The uploaded bytes as an RGB PIL image, transparent areas composited on white (as a browser
    shows them). Raises UploadError naming the file for an empty upload, one over `max_bytes`, or
    one that is not an image PIL can decode (whatever its suffix)."""
    from PIL import Image, UnidentifiedImageError

    from .ocr import on_white

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
            return on_white(image)
    except UnidentifiedImageError as error:
        raise UploadError(f"{name}: not an image (no PNG, JPEG or WebP header)") from error
    except (Image.DecompressionBombError, OSError) as error:  # truncated or corrupt, or absurdly large
        raise UploadError(f"{name}: not an image that can be decoded ({error})") from error


# ------------------------------------------------------------------ the models

@dataclass
class Answer:
    """One screen's DDL and how it was made: `path` names the models, `screen_text` is what OCR read
    (OCR path only), `seconds` the time per stage."""

    sql: str
    path: str
    screen_text: str | None = None
    seconds: dict = field(default_factory=dict)


def check_adapter(folder: str | Path | None, option: str) -> None:
    """Raise FileNotFoundError naming `option` when `folder` is given but holds no peft adapter."""
    if folder is not None and not (Path(folder) / "adapter_config.json").exists():
        what = "does not exist" if not Path(folder).exists() else "has no adapter_config.json"
        raise FileNotFoundError(f"{option} {folder}: {what} (train it in chapter 08, or leave the option out)")


@dataclass
class GhostArchitect:
    """Screen -> DDL with lazily loaded models. `text_model`: embedded alias, folder or hub id;
    `vision_model`: None for the OCR path, else a vision checkpoint (or `lib.vision.TINY_RANDOM`);
    adapters are peft folders (None: the base model alone). Adapters and the text model are checked
    on construction, before any model loads: raises FileNotFoundError or `ModelNotFoundError`."""

    text_model: str = "gemma-3-270m"
    text_adapter: str | None = None
    vision_model: str | None = None
    vision_adapter: str | None = None
    max_new_tokens: int = 320
    compute_dtype: str | torch.dtype = "auto"   # lib.precision's policy, or a dtype / its name
    _loaded: dict = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self):
        from .model import resolve_model

        if self.vision_adapter and not self.vision_model:
            raise ValueError("--vision-adapter needs --vision-model (the checkpoint it was trained on)")
        check_adapter(self.text_adapter, "--text-adapter")
        check_adapter(self.vision_adapter, "--vision-adapter")
        self._text_source = resolve_model(self.text_model)

    @property
    def screenshot_path(self) -> str:
        """Which models answer a screenshot, in words."""
        if self.vision_model:
            return f"vision model {self.vision_model}" + (f" + {self.vision_adapter}" if self.vision_adapter else "")
        return f"OCR + text model {self.text_model}" + (f" + {self.text_adapter}" if self.text_adapter else "")

    def text_pipeline(self):
        with self._lock:  # two app sessions asking at once load the model once
            if "text" not in self._loaded:
                from .evaluation import load_finetuned
                from .model import load_causal_lm, load_tokenizer

                dtype = resolve_compute_dtype(self.compute_dtype)
                source = self._text_source
                model = (load_finetuned(source, self.text_adapter, dtype) if self.text_adapter
                         else load_causal_lm(source, dtype).eval())
                self._loaded["text"] = (model, load_tokenizer(source))
        return self._loaded["text"]

    def vision_pipeline(self):
        with self._lock:
            if "vision" not in self._loaded:
                from .vision import load_vision_for_inference

                self._loaded["vision"] = load_vision_for_inference(self.vision_model, self.vision_adapter,
                                                                   resolve_compute_dtype(self.compute_dtype))
        return self._loaded["vision"]

    def from_text(self, screen_texts: list[str], batch_size: int = 4) -> list[Answer]:
        """DDL for each screen's visible text (greedy)."""
        import time

        from .evaluation import generate

        model, tokenizer = self.text_pipeline()
        started = time.monotonic()
        answers = generate(model, tokenizer, [text_prompt(t) for t in screen_texts], self.max_new_tokens, batch_size)
        each = (time.monotonic() - started) / max(1, len(screen_texts))
        path = f"text model {self.text_model}" + (f" + {self.text_adapter}" if self.text_adapter else "")
        return [Answer(extract_sql(a), path, seconds={"generation": each}) for a in answers]

    def from_images(self, images: list, batch_size: int = 2) -> list[Answer]:
        """DDL for each screenshot (PIL images or paths), greedy, through `screenshot_path`."""
        import time

        if self.vision_model:
            from .vision import generate_ddl

            model, processor = self.vision_pipeline()
            started = time.monotonic()
            answers = generate_ddl(model, processor, images, INSTRUCTION, self.max_new_tokens, batch_size)
            each = (time.monotonic() - started) / max(1, len(images))
            return [Answer(extract_sql(a), self.screenshot_path, seconds={"generation": each}) for a in answers]
        from .screen_layout import read_screen

        texts, ocr_seconds = [], []
        for image in images:
            started = time.monotonic()
            texts.append(read_screen(image))
            ocr_seconds.append(time.monotonic() - started)
        answers = self.from_text(texts)
        return [Answer(a.sql, self.screenshot_path, text, {"ocr": o, **a.seconds})
                for a, text, o in zip(answers, texts, ocr_seconds)]


# ------------------------------------------------------------------ evaluation (chapter 08)

def evaluate_text_model(model, tokenizer, examples: list[GhostExample], max_new_tokens: int,
                        batch_size: int = 4, adapter: bool = True, source: str = "dom",
                        texts: list[str] | None = None):
    """Greedy DDL for each example's screen text, scored against its true DDL.

    The screen text is `texts[i]` when given (e.g. `read_screens_timed`'s OCR of the screenshots),
    else the example's own (`source`: "dom" or "ocr", see `lib.ghost_dataset.screen_of`). Returns
    the per-example DataFrame of `lib.sql_eval.report` with the SQL, the tokens generated
    (`new_tokens`), the batch that generated it (`batch`: 0, 1, ...) and the generation seconds per
    screen (a batch's time over its screens), and the total seconds. With adapter=False a peft
    model runs as its base model.
    """
    import time

    from .evaluation import adapter_switch, generate_with_details
    from .ghost_dataset import screen_of

    texts = texts if texts is not None else [screen_of(e, source) for e in examples]
    if len(texts) != len(examples):
        raise ValueError(f"{len(texts)} texts for {len(examples)} examples")
    model.eval()
    answers, seconds, batches = [], [], []
    with adapter_switch(model, adapter):
        for start in range(0, len(texts), batch_size):
            batch = texts[start:start + batch_size]
            started = time.monotonic()
            answers += generate_with_details(model, tokenizer, [text_prompt(t) for t in batch], max_new_tokens,
                                             len(batch))
            seconds += [(time.monotonic() - started) / len(batch)] * len(batch)
            batches += [start // batch_size] * len(batch)
    sql = [extract_sql(a.text) for a in answers]
    table = report([e.id for e in examples], sql, [e.ddl for e in examples])
    return table.assign(sql=sql, new_tokens=[a.new_tokens for a in answers], batch=batches,
                        generation_seconds=seconds), sum(seconds)


def train_text_architect(examples: list[GhostExample], folder: str | Path, source: str, run_dir: str | Path,
                         spec, device: str):
    """Train the text Ghost Architect on one text source ("dom" or "ocr") of the dataset's train
    split: a fresh adapter on the base as `spec` (`lib.run_spec.RunSpec`) says
    (`lib.training.load_for_training`), response-only loss on the DDL. Returns (peft model,
    tokenizer, `lib.training.TrainingResult`); a finished run in `run_dir` is loaded instead of
    trained again (see `lib.training.train`)."""
    from .ghost_dataset import text_records
    from .training import load_for_training, train

    torch.manual_seed(spec.optimisation.seed)
    model, tokenizer = load_for_training(spec)
    result = train(model, tokenizer, text_records(examples, "train", folder, source), spec, run_dir, device)
    return model, tokenizer, result


def read_screens_timed(examples: list[GhostExample], folder: str | Path) -> tuple[list[str], list[float]]:
    """OCR + layout of each example's screenshot, now, one at a time: (screen texts, seconds each)."""
    import time

    from .screen_layout import read_screen

    texts, seconds = [], []
    for example in examples:
        started = time.monotonic()
        texts.append(read_screen(Path(folder) / example.image))
        seconds.append(time.monotonic() - started)
    return texts, seconds


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


def show(console, name: str, answer: Answer) -> bool:
    """Print one result: which path answered, the SQL highlighted, the checks as a table, the tables
    if it executes. Returns whether every check passed."""
    from rich.markup import escape
    from rich.panel import Panel
    from rich.syntax import Syntax
    from rich.table import Table

    sql = answer.sql
    timing = ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in answer.seconds.items())
    # A line of its own, whole however long: a panel's title and subtitle are cut to the panel's width.
    console.print(f"[bold]{escape(name)}[/]: {escape(answer.path)}; {timing}", soft_wrap=True)
    console.print(Panel(Syntax(sql or "-- (no SQL)", "sql", word_wrap=True), expand=False))
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
    """The command line. Exit status 0 when every screen's DDL passes its checks, 1 when some do
    not, 2 for bad input (a missing file, a non-image, a bad adapter folder)."""
    parser = argparse.ArgumentParser(prog="python -m lib.ghost_architect", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", help="screenshots or folders of screenshots")
    parser.add_argument("--text", action="append", default=[], metavar="FILE",
                        help="a file of a screen's visible text (repeatable)")
    parser.add_argument("--text-model", default="gemma-3-270m")
    parser.add_argument("--text-adapter", help="peft adapter folder (chapter 08: output/<run>/ghost-ocr/adapter)")
    parser.add_argument("--vision-model", help="a vision checkpoint for screenshots (GPU), or 'tiny-random' to "
                                               "demonstrate the path; default: OCR + the text model")
    parser.add_argument("--vision-adapter")
    parser.add_argument("--max-new-tokens", type=int, default=320)
    args = parser.parse_args(argv)
    if not args.paths and not args.text:
        parser.error("give screenshots/folders, or --text FILE")

    from rich.console import Console

    from .model import ModelNotFoundError

    console = Console()
    try:
        architect = GhostArchitect(args.text_model, args.text_adapter, args.vision_model, args.vision_adapter,
                                   args.max_new_tokens)
        images = screenshots_in(args.paths) if args.paths else []
        texts = [Path(t).read_text(encoding="utf-8") for t in args.text]
        loaded = [read_upload(str(p), p.read_bytes()) for p in images]
    except (OSError, ValueError, ModelNotFoundError) as error:  # UploadError is a ValueError
        console.print(f"[red]error:[/] {error}", soft_wrap=True)
        return 2
    results = list(zip(map(str, images), architect.from_images(loaded) if loaded else []))
    results += list(zip(args.text, architect.from_text(texts) if texts else []))
    passed = [show(console, name, answer) for name, answer in results]
    console.print(f"{sum(passed)} of {len(passed)} screens gave DDL that passes every check")
    return 0 if all(passed) else 1


if __name__ == "__main__":
    raise SystemExit(main())
