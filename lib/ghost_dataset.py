"""The Ghost Architect dataset (chapter 08): UI screenshots labelled with the exact DDL behind them.

Schemas come first (`lib.schemas`), screens are rendered from them (`lib.ui_render`), so each
label is the true DDL of the tables a screen shows. One example = one screen: its PNG, the same
screen as text (for the text-only path), and the DDL. Schemas are split train/val/test, never
their screens, so a test schema was never seen in training. Repeated schemas are skipped.

    <folder>/images/<id>.png
    <folder>/examples.jsonl        one example per line (written to a temporary file, then renamed)
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, fields
from pathlib import Path

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
    screen_text: str


def build_dataset(folder: str | Path, examples: int = 320, seed: int = 0, screens_per_schema: int = 4,
                  fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> list[GhostExample]:
    """Generate `examples` examples (rounded up to whole schemas) into `folder`; deterministic.

    Raises ValueError for fractions that do not sum to 1 or a count below one schema per split.
    """
    if abs(sum(fractions) - 1) > 1e-9 or len(fractions) != 3:
        raise ValueError(f"fractions must be 3 numbers summing to 1 (train, val, test), got {fractions}")
    schemas_needed = -(-examples // screens_per_schema)
    if schemas_needed < 3:
        raise ValueError(f"examples={examples} gives {schemas_needed} schemas: need at least one per split")
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
    folder = Path(folder)
    captures = screenshot(screens, folder / "images", names=[m[0] for m in meta])
    result = [GhostExample(name, split, schema.seed, schema.domain, screen.kind, screen.style, screen.tables,
                           schema.subset(screen.tables).ddl(), str(capture.image.relative_to(folder)), capture.text)
              for (name, split, schema), screen, capture in zip(meta, screens, captures)]
    partial = folder / "examples.jsonl.partial"
    partial.write_text("".join(json.dumps(asdict(e)) + "\n" for e in result))
    partial.rename(folder / "examples.jsonl")
    return result


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


def text_messages(example: GhostExample) -> list[dict]:
    """The text-only conversation: the screen's text and structure instead of pixels."""
    return [{"role": "user", "content": f"{INSTRUCTION}\n\nScreen:\n{example.screen_text}"},
            {"role": "assistant", "content": example.ddl}]


def text_records(examples: list[GhostExample], split: str, folder: str | Path) -> list:
    """The `split`'s examples as `lib.data.Record`s of `text_messages`, for `lib.training.train`.

    Each record points back to its line of examples.jsonl. Raises ValueError for an unknown split.
    """
    from .data import Record

    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: choose one of {SPLITS}")
    path = str(Path(folder) / "examples.jsonl")
    return [Record(text_messages(e), path, number, {"id": e.id, "tables": list(e.tables)})
            for number, e in enumerate(examples, start=1) if e.split == split]
