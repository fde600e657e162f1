"""The Ghost Architect dataset (chapter 08): UI screenshots labelled with the exact DDL behind them.

Schemas come first (`lib.schemas`), screens are rendered from them (`lib.ui_render`), so each
label is the true DDL of the tables a screen shows. One example = one screen: its PNG, the
screen's text read from the page's DOM (`screen_text`, what no user has), the same screen read
back from the pixels by OCR and layout analysis (`ocr_text`, `lib.screen_layout`: what a user's
screenshot gives), and the DDL. Schemas are split train/val/test, never their screens, so a test
schema was never seen in training. Repeated schemas are skipped.

    <folder>/images/<id>.png
    <folder>/examples.jsonl        one example per line
    <folder>/dataset.json          the settings it was built with; the same settings reuse it
    <folder>/build.json            how it was built: {"ocr_processes": processes that read it back}

The whole set is built in a staging folder and moved into place when complete: a build that
fails or is killed leaves the previous dataset as it was.
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from .artifacts import replace_folder
from .data import SPLITS
from .schemas import generate_schema
from .ui_render import SCREEN_KINDS, STYLES, render_screen, screenshot

INSTRUCTION = ("Write the SQLite DDL of the database tables behind this application screen: one CREATE TABLE per "
               "table shown, with column types, PRIMARY KEY, FOREIGN KEY (REFERENCES), NOT NULL, UNIQUE and DEFAULT.")


@dataclass(frozen=True)
class GhostExample:
    id: str
    split: str
    schema_seed: int
    domain: str
    kind: str
    style: str
    tables: tuple[str, ...]
    ddl: str
    image: str  # relative to the dataset folder
    screen_text: str  # from the page's DOM (lib.ui_render.SCREEN_TEXT_JS)
    ocr_text: str     # from the pixels (lib.screen_layout.read_screen); "" when built with ocr=False


TEXT_SOURCES = ("dom", "ocr")


def build_dataset(folder: str | Path, examples: int = 320, seed: int = 0, screens_per_schema: int = 4,
                  fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), ocr: bool = True,
                  workers: int | None = None) -> list[GhostExample]:
    """Generate `examples` examples (rounded up to whole schemas) into `folder`; deterministic.

    `ocr`: also read every screenshot back with OCR + layout (`ocr_text`; about 1.7 s a screen on
    one core of this course's CPU, `workers` processes at once, default one per core). A folder
    already built with the same settings is loaded instead of rebuilt. Raises ValueError for
    fractions that do not sum to 1 or a count below one schema per split.
    """
    if abs(sum(fractions) - 1) > 1e-9 or len(fractions) != 3:
        raise ValueError(f"fractions must be 3 numbers summing to 1 (train, val, test), got {fractions}")
    schemas_needed = -(-examples // screens_per_schema)
    if schemas_needed < 3:
        raise ValueError(f"examples={examples} gives {schemas_needed} schemas: need at least one per split")
    folder = Path(folder)
    settings = {"examples": examples, "seed": seed, "screens_per_schema": screens_per_schema,
                "fractions": list(fractions), "ocr": ocr, "format": 2}
    cached = _reuse(folder, settings)
    if cached is not None:
        return cached
    rng = random.Random(seed)
    schemas, seen, schema_seed = [], set(), seed * 100_003
    while len(schemas) < schemas_needed:
        schema = generate_schema(schema_seed)
        if schema.ddl() not in seen:
            seen.add(schema.ddl())
            schemas.append(schema)
        schema_seed += 1
    # At least one schema in each of val and test, however few schemas there are.
    cut_train = min(round(fractions[0] * len(schemas)), len(schemas) - 2)
    cut_val = min(cut_train + max(1, round(fractions[1] * len(schemas))), len(schemas) - 1)
    order = list(range(len(schemas)))
    rng.shuffle(order)
    split_of = {i: "train" if rank < cut_train else "val" if rank < cut_val else "test" for rank, i in enumerate(order)}
    screens, meta = [], []
    for i, schema in enumerate(schemas):
        kinds = rng.sample(SCREEN_KINDS, k=min(screens_per_schema, len(SCREEN_KINDS)))
        kinds += [rng.choice(SCREEN_KINDS) for _ in range(screens_per_schema - len(kinds))]
        for j, kind in enumerate(kinds):
            screen = render_screen(schema, kind, rng.choice(sorted(STYLES)), rng.randrange(2**31))
            screens.append(screen)
            meta.append((f"s{schema.seed:06d}-{j}-{kind}", split_of[i], schema))
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.building-", dir=folder.parent))
    try:
        captures = screenshot(screens, staging / "images", names=[m[0] for m in meta])
        processes = ocr_processes(len(captures), workers) if ocr else 0
        read_back = read_screens([c.image for c in captures], processes) if ocr else [""] * len(captures)
        result = [GhostExample(name, split, schema.seed, schema.domain, screen.kind, screen.style, screen.tables,
                               schema.subset(screen.tables).ddl(), str(capture.image.relative_to(staging)),
                               capture.text, text)
                  for (name, split, schema), screen, capture, text in zip(meta, screens, captures, read_back)]
        (staging / "examples.jsonl").write_text("".join(json.dumps(asdict(e)) + "\n" for e in result))
        (staging / "dataset.json").write_text(json.dumps(settings, indent=2) + "\n")
        # how it was built, beside the settings that decide reuse (which the process count does not)
        (staging / "build.json").write_text(json.dumps({"ocr_processes": processes}) + "\n")
        replace_folder(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return result


def _reuse(folder: Path, settings: dict) -> list[GhostExample] | None:
    """The examples of `folder` if it was built with exactly `settings` and loads, else None."""
    try:
        if json.loads((folder / "dataset.json").read_text()) == settings:
            return load_examples(folder)
    except (OSError, ValueError):  # missing, partial or from another version: build again
        pass
    return None


def ocr_processes(images: int, workers: int | None = None) -> int:
    """How many processes read `images` screenshots back: `workers`, or by default one per CPU core
    (at most one per screenshot)."""
    import os

    return workers or min(images, os.cpu_count() or 1)


def read_screens(images: list[Path], workers: int | None = None) -> list[str]:
    """`lib.screen_layout.read_screen` of each screenshot, in `workers` processes (default: one per
    CPU core, `ocr_processes`; onnxruntime on one thread each)."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from .screen_layout import read_screen

    workers = ocr_processes(len(images), workers)
    if workers <= 1:
        return [read_screen(path) for path in images]
    # spawn, not fork: the parent may hold torch's and onnxruntime's threads
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        return list(pool.map(read_screen, images, chunksize=4))


def load_examples(folder: str | Path) -> list[GhostExample]:
    """The examples of a dataset folder. Raises ValueError naming the file, line and field at fault."""
    path = Path(folder) / "examples.jsonl"
    names = {f.name for f in fields(GhostExample)}
    result = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number}: not JSON ({error.msg})") from error
        missing = names - set(row)
        if missing:
            raise ValueError(f"{path}:{number}: missing field(s) {sorted(missing)}")
        if row["split"] not in SPLITS:
            raise ValueError(f"{path}:{number}: field 'split' is {row['split']!r}, not one of {SPLITS}")
        if not (Path(folder) / row["image"]).exists():
            raise ValueError(f"{path}:{number}: field 'image': {row['image']} does not exist")
        result.append(GhostExample(**{k: tuple(v) if k == "tables" else v for k, v in row.items() if k in names}))
    return result


def vision_messages(example: GhostExample, folder: str | Path) -> list[dict]:
    """The example as a conversation: image and instruction in the user turn, the DDL as the answer."""
    return [{"role": "user", "content": [{"type": "image", "image": str(Path(folder) / example.image)},
                                         {"type": "text", "text": INSTRUCTION}]},
            {"role": "assistant", "content": [{"type": "text", "text": example.ddl}]}]


def screen_of(example: GhostExample, source: str = "dom") -> str:
    """The example's screen text from its DOM ("dom") or from its pixels ("ocr"). Raises ValueError
    for another source, or "ocr" on a dataset built without OCR."""
    if source not in TEXT_SOURCES:
        raise ValueError(f"unknown text source {source!r}: choose one of {TEXT_SOURCES}")
    if source == "ocr" and not example.ocr_text:
        raise ValueError(f"{example.id}: no OCR text (the dataset was built with ocr=False)")
    return example.screen_text if source == "dom" else example.ocr_text


def text_messages(example: GhostExample, source: str = "dom") -> list[dict]:
    """The text-only conversation: the screen's text and structure (`screen_of`) instead of pixels."""
    return [{"role": "user", "content": f"{INSTRUCTION}\n\nScreen:\n{screen_of(example, source)}"},
            {"role": "assistant", "content": example.ddl}]


def text_records(examples: list[GhostExample], split: str, folder: str | Path, source: str = "dom") -> list:
    """The `split`'s examples as `lib.data.Record`s of `text_messages`, for `lib.training.train`.

    Each record points back to its line of examples.jsonl. Raises ValueError for an unknown split.
    """
    from .data import Record

    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: choose one of {SPLITS}")
    path = str(Path(folder) / "examples.jsonl")
    return [Record(text_messages(e, source), path, number, {"id": e.id, "tables": list(e.tables), "source": source})
            for number, e in enumerate(examples, start=1) if e.split == split]
