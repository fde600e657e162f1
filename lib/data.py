"""Conversation data: reading user files, validating them, deduplicating, length checks, tokenizing.

Accepted inputs (json array or jsonl, one record each), all converted to one internal form, a list
of {"role": "system"|"user"|"assistant", "content": str} messages:

* alpaca   {"instruction", "input"?, "output"}
* ShareGPT {"conversations": [{"from": "human"|"gpt"|"system", "value"}]}  (or role/content)
* messages {"messages": [{"role", "content"}]}

Validation reads everything before any model loads and reports every bad record with its
file, line, field and reason, not only the first. Records longer than max_seq_length are reported
with their token count and left out; duplicates are removed; every removal is counted.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROLE_ALIASES = {
    "system": "system", "user": "user", "human": "user",
    "assistant": "assistant", "gpt": "assistant", "model": "assistant",
}
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Issue:
    """One problem with one record: where it is and what is wrong."""

    file: str
    line: int
    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.field}: {self.reason}"


class DataValidationError(ValueError):
    """Raised when records are invalid; `.issues` lists every one, the message names them."""

    def __init__(self, issues: list[Issue]):
        self.issues = issues
        shown = "\n".join(f"  {issue}" for issue in issues[:50])
        more = f"\n  ... and {len(issues) - 50} more" if len(issues) > 50 else ""
        super().__init__(f"{len(issues)} invalid record(s):\n{shown}{more}")


@dataclass
class Record:
    """One conversation and where it came from. `meta` keeps the source's other fields."""

    messages: list[dict]
    file: str
    line: int
    meta: dict = field(default_factory=dict)

    @property
    def prompt_messages(self) -> list[dict]:
        """The conversation without its last (assistant) turn: what a model is asked."""
        return self.messages[:-1]

    @property
    def reference(self) -> str:
        """The last assistant turn: the answer the data expects."""
        return self.messages[-1]["content"]


# ---------------------------------------------------------------- reading files

def _json_array_items(text: str) -> tuple[list[tuple[int, Any]], list[tuple[int, str]]]:
    """(line, value) for each element of a JSON array, with the line it starts on, and (line,
    problem) for what is wrong with the array itself. One pass over the text: line numbers are
    counted between consecutive elements, never from the start again."""
    decoder = json.JSONDecoder()
    whitespace = re.compile(r"\s*")
    items, problems = [], []
    pos, line = 0, 1

    def advance(to: int) -> None:  # move `pos` to `to`, counting the newlines passed
        nonlocal pos, line
        line += text.count("\n", pos, to)
        pos = to

    advance(whitespace.match(text, 0).end())
    if not text.startswith("[", pos):
        return [], [(line, "a .json file must hold an array of records ([...]); use .jsonl for one record per line")]
    advance(whitespace.match(text, pos + 1).end())
    while pos < len(text) and text[pos] != "]":
        start_line = line
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            problems.append((start_line + text.count("\n", pos, err.pos), f"bad JSON: {err.msg}"))
            return items, problems  # the rest of the array cannot be located reliably
        items.append((start_line, value))
        advance(whitespace.match(text, end).end())
        if text.startswith(",", pos):
            advance(whitespace.match(text, pos + 1).end())
        elif pos < len(text) and text[pos] != "]":
            problems.append((line, "expected ',' or ']' after a record"))
            return items, problems
    if pos >= len(text):
        problems.append((line, "the array is not closed: no ']' at the end"))
    else:
        advance(whitespace.match(text, pos + 1).end())
        if pos < len(text):
            problems.append((line, "text after the array's closing ']' (a record outside the array is not read)"))
    return items, problems


def _decode_utf8(raw: bytes, file: str) -> tuple[str | None, Issue | None]:
    """The text of a file's bytes, a UTF-8 byte-order mark (which some editors write) dropped."""
    try:
        return raw.decode("utf-8-sig"), None
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        return None, Issue(file, line, "-", f"not UTF-8 (byte 0x{raw[err.start]:02x} at offset {err.start})")


def read_raw_records(path: str | Path) -> tuple[list[tuple[int, Any]], list[Issue]]:
    """Parse a .json or .jsonl file into (line, object) pairs, plus issues for unreadable lines.

    An empty file, or one with no record, is an issue (line 1), not zero records.
    """
    path = Path(path)
    file = str(path)
    if not path.exists():
        raise FileNotFoundError(f"dataset file not found: {path}")
    if path.suffix not in (".json", ".jsonl"):
        raise ValueError(f"{path}: unsupported file type {path.suffix!r}; use .json or .jsonl")
    raw = path.read_bytes()
    rows, issues = [], []
    if path.suffix == ".jsonl":
        if raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]  # a byte-order mark, as some editors write it
        for number, raw_line in enumerate(raw.split(b"\n"), start=1):
            if not raw_line.strip():
                continue
            text, issue = _decode_utf8(raw_line, file)
            if issue:
                issues.append(Issue(file, number, "-", issue.reason))
                continue
            try:
                rows.append((number, json.loads(text)))
            except json.JSONDecodeError as err:
                issues.append(Issue(file, number, "-", f"bad JSON: {err.msg} (column {err.colno})"))
    else:
        text, issue = _decode_utf8(raw, file)
        if issue:
            return [], [issue]
        rows, problems = _json_array_items(text)
        issues += [Issue(file, line, "-", problem) for line, problem in problems]
    if not rows and not issues:
        issues.append(Issue(file, 1, "-", "the file holds no records"))
    return rows, issues


# ---------------------------------------------------------------- formats

class _FieldError(Exception):
    def __init__(self, field_name: str, reason: str):
        super().__init__(reason)
        self.field, self.reason = field_name, reason


def detect_format(obj: Any) -> str:
    """'alpaca', 'sharegpt' or 'messages' for one record; raises _FieldError if none fits."""
    if not isinstance(obj, dict):
        raise _FieldError("-", f"record is a {type(obj).__name__}, expected an object")
    if "messages" in obj:
        return "messages"
    if "conversations" in obj:
        return "sharegpt"
    if "instruction" in obj or "output" in obj:
        return "alpaca"
    raise _FieldError("-", "no 'messages', 'conversations' or 'instruction'/'output' field")


def _string_field(obj: dict, key: str, where: str, required: bool = True) -> str:
    if key not in obj:
        if required:
            raise _FieldError(where, "missing field")
        return ""
    if not isinstance(obj[key], str):
        raise _FieldError(where, f"expected a string, got {type(obj[key]).__name__}")
    try:
        obj[key].encode("utf-8")
    except UnicodeEncodeError as err:  # JSON's "\ud800" escapes decode to text no tokenizer takes
        raise _FieldError(where, f"not valid Unicode text: {err.reason} at character {err.start}") from err
    return obj[key]


def to_messages(obj: Any) -> list[dict]:
    """Convert one record of any accepted format to the internal messages form."""
    kind = detect_format(obj)
    if kind == "alpaca":
        instruction = _string_field(obj, "instruction", "instruction")
        extra = _string_field(obj, "input", "input", required=False)
        output = _string_field(obj, "output", "output")
        user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
        if "system" in obj:
            messages.insert(0, {"role": "system", "content": _string_field(obj, "system", "system")})
        return messages
    key = "messages" if kind == "messages" else "conversations"
    turns = obj[key]
    if not isinstance(turns, list) or not turns:
        raise _FieldError(key, "expected a non-empty list of turns")
    messages = []
    for i, turn in enumerate(turns):
        where = f"{key}[{i}]"
        if not isinstance(turn, dict):
            raise _FieldError(where, f"expected an object, got {type(turn).__name__}")
        # messages use role/content; ShareGPT uses from/value, or role/content in newer exports
        role_key, text_key = ("role", "content") if kind == "messages" or "role" in turn else ("from", "value")
        role = _string_field(turn, role_key, f"{where}.{role_key}")
        if role not in ROLE_ALIASES:
            raise _FieldError(f"{where}.{role_key}", f"unknown role {role!r}")
        messages.append({"role": ROLE_ALIASES[role], "content": _string_field(turn, text_key, f"{where}.{text_key}")})
    return messages


def conversation_problems(messages: list[dict]) -> list[tuple[str, str]]:
    """(field, reason) for each structural problem: role order, empty turns."""
    problems = []
    turns = messages[1:] if messages and messages[0]["role"] == "system" else messages
    for i, message in enumerate(turns):
        index = i + (len(messages) - len(turns))
        expected = "user" if i % 2 == 0 else "assistant"
        if message["role"] != expected:
            problems.append((f"messages[{index}].role", f"wrong role order: expected {expected}, got {message['role']}"))
            break
        if not message["content"].strip():
            kind = "empty assistant turn" if expected == "assistant" else "empty user turn"
            problems.append((f"messages[{index}].content", kind))
    if turns and turns[-1]["role"] != "assistant" and not problems:
        problems.append((f"messages[{len(messages) - 1}].role", "conversation must end with an assistant turn"))
    if not turns:
        problems.append(("messages", "no user/assistant turns"))
    return problems


def load_records(path: str | Path) -> tuple[list[Record], list[Issue]]:
    """Read and convert every record of one file; never stops at the first bad one."""
    rows, issues = read_raw_records(path)
    records = []
    for line, obj in rows:
        try:
            messages = to_messages(obj)
        except _FieldError as err:
            issues.append(Issue(str(path), line, err.field, err.reason))
            continue
        problems = conversation_problems(messages)
        issues.extend(Issue(str(path), line, f, r) for f, r in problems)
        if not problems:
            meta = {k: v for k, v in obj.items() if k not in ("messages", "conversations", "instruction", "input", "output", "system")}
            records.append(Record(messages, str(path), line, meta))
    return records, issues


# ---------------------------------------------------------------- dedup and length

def _normalize(text: str) -> str:
    return " ".join(text.lower().split())


def conversation_key(messages: list[dict], normalized: bool) -> str:
    """A hash of the conversation; `normalized` ignores case and whitespace differences in the
    system and user turns only. Answers always compare exactly: two code answers that differ in
    indentation or case are different programs (Python reads both), so they are not duplicates."""
    parts = [(m["role"], _normalize(m["content"]) if normalized and m["role"] != "assistant" else m["content"])
             for m in messages]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def deduplicate(splits: dict[str, list[Record]]) -> tuple[dict[str, list[Record]], dict[str, Counter]]:
    """Remove exact and normalized duplicates across all splits, keeping the first seen.

    Normalized: the same answer, exactly, to a question that differs only in case and whitespace
    (`conversation_key`). Splits are visited in order (train, val, test), so a test record that
    repeats a train record is removed from test: no leakage. Returns (kept, {"exact":
    Counter(split), "normalized": ...}).
    """
    seen_exact, seen_norm = set(), set()
    removed = {"exact": Counter(), "normalized": Counter()}
    kept = {}
    for split, records in splits.items():
        kept[split] = []
        for record in records:
            exact = conversation_key(record.messages, normalized=False)
            norm = conversation_key(record.messages, normalized=True)
            if exact in seen_exact:
                removed["exact"][split] += 1
            elif norm in seen_norm:
                removed["normalized"][split] += 1
            else:
                kept[split].append(record)
            seen_exact.add(exact)
            seen_norm.add(norm)
    return kept, removed


def conversation_lengths(tokenizer, sets: dict[str, list[Record]], max_seq_length: int) -> dict[str, list[int]]:
    """{set name: token count of each record's conversation} under the chat template, checked
    against `max_seq_length`. For data that must fit whole (no record may be cut or dropped).

    Raises ValueError naming how many records are longer, and the longest (set, index, tokens).
    """
    lengths = {name: [len(tokenize_conversation(tokenizer, r.messages)["input_ids"]) for r in records]
               for name, records in sets.items()}
    over = [(n, name, i) for name, values in lengths.items() for i, n in enumerate(values) if n > max_seq_length]
    if over:
        tokens, name, index = max(over)
        raise ValueError(f"{len(over)} conversations exceed max_seq_length={max_seq_length}; the longest is "
                         f"{name} record {index} with {tokens} tokens: raise max_seq_length")
    return lengths


def tokenize_conversation(tokenizer, messages: list[dict]) -> dict[str, list[int]]:
    """Token ids of a conversation under the tokenizer's chat template, and its loss mask.

    Returns {"input_ids": [...], "assistant_masks": [...]} of equal length; the mask is 1 on the
    tokens of every assistant turn (its text and the template's end-of-turn tokens) and 0 on the
    prompt, the system and user turns and the assistant header. This is response-only loss.
    The spans come from rendering growing prefixes of the conversation, so it works with any
    chat template that renders a conversation as the concatenation of its turns; a template that
    does not raises ValueError.
    """
    def ids(msgs, generation_prompt):
        return tokenizer.apply_chat_template(msgs, tokenize=True, add_generation_prompt=generation_prompt,
                                             return_dict=True)["input_ids"]

    full = ids(messages, False)
    mask = [0] * len(full)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt, through_turn = ids(messages[:i], True), ids(messages[: i + 1], False)
        start, end = len(prompt), len(through_turn)
        if full[:start] != prompt or full[:end] != through_turn:
            raise ValueError("chat template does not render conversations prefix by prefix")
        mask[start:end] = [1] * (end - start)
    return {"input_ids": full, "assistant_masks": mask}


def response_labels(tokens: dict[str, list[int]]) -> list[int]:
    """Labels for causal-LM loss from `tokenize_conversation`'s output: the token id where the
    assistant mask is 1, -100 (ignored by cross-entropy) elsewhere. Same length as input_ids."""
    return [t if m else -100 for t, m in zip(tokens["input_ids"], tokens["assistant_masks"])]


# ---------------------------------------------------------------- the whole preparation

@dataclass
class DataReport:
    """What preparation read, kept and removed, per split. Every removal is counted here."""

    read: dict[str, int]
    duplicates_exact: dict[str, int]
    duplicates_normalized: dict[str, int]
    too_long: list[tuple[str, int, int]]  # (file:line, tokens, split)
    kept: dict[str, int]
    max_seq_length: int
    token_lengths: dict[str, list[int]]

    def table(self) -> list[dict]:
        """One row per split: read -> removed by reason -> kept."""
        too_long = Counter(split for _, _, split in self.too_long)
        return [{
            "split": s, "read": self.read.get(s, 0),
            "exact duplicates": self.duplicates_exact.get(s, 0),
            "normalized duplicates": self.duplicates_normalized.get(s, 0),
            f"over {self.max_seq_length} tokens": too_long.get(s, 0),
            "kept": self.kept.get(s, 0),
        } for s in self.read]


@dataclass
class PreparedData:
    records: dict[str, list[Record]]
    report: DataReport


def validate_files(files: dict[str, str | Path]) -> dict[str, list[Record]]:
    """Load every split's file; raise DataValidationError listing every bad record of all files."""
    records, issues = {}, []
    for split, path in files.items():
        records[split], found = load_records(path)
        issues.extend(found)
    if issues:
        raise DataValidationError(sorted(issues, key=lambda i: (i.file, i.line)))
    return records


def prepare_dataset(files: dict[str, str | Path], tokenizer, max_seq_length: int) -> PreparedData:
    """Validate, deduplicate and length-check the split files {split: path}.

    Raises DataValidationError (all issues listed) if any record is malformed. Records longer
    than `max_seq_length` tokens under the chat template are left out and listed in the report.
    """
    records = validate_files(files)
    read = {split: len(rows) for split, rows in records.items()}
    records, removed = deduplicate(records)
    too_long, lengths = [], {}
    for split, rows in records.items():
        kept, lengths[split] = [], []
        for record in rows:
            n = len(tokenize_conversation(tokenizer, record.messages)["input_ids"])
            if n > max_seq_length:
                too_long.append((f"{record.file}:{record.line}", n, split))
            else:
                kept.append(record)
                lengths[split].append(n)
        records[split] = kept
    report = DataReport(read, dict(removed["exact"]), dict(removed["normalized"]), too_long,
                        {s: len(r) for s, r in records.items()}, max_seq_length, lengths)
    return PreparedData(records, report)


MANIFEST = "manifest.json"


def save_prepared(prepared: PreparedData, folder: str | Path) -> Path:
    """Write the cleaned splits (messages + meta + source file:line), the report and a manifest of
    their SHA-256 digests to `folder`, as one set: everything goes to a staging folder first, which
    replaces `folder` only when complete, so a failure (a full disk) leaves the previous set whole.

    Raises ValueError, before writing anything, when a split is empty.
    """
    import shutil
    import tempfile
    from dataclasses import asdict

    from .artifacts import replace_folder

    empty = [split for split in SPLITS if not prepared.records.get(split)]
    if empty:
        raise ValueError(f"no records left in split(s) {', '.join(empty)}: nothing to train or test on "
                         "(see the report for what was removed)")
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.saving-", dir=folder.parent))
    try:
        digests = {}
        for split in SPLITS:
            data = "".join(json.dumps(asdict(r), ensure_ascii=False) + "\n" for r in prepared.records[split])
            (staging / f"{split}.jsonl").write_text(data, encoding="utf-8")
            digests[f"{split}.jsonl"] = hashlib.sha256(data.encode("utf-8")).hexdigest()
        report = json.dumps(asdict(prepared.report), indent=2, ensure_ascii=False) + "\n"
        (staging / "data-report.json").write_text(report, encoding="utf-8")
        digests["data-report.json"] = hashlib.sha256(report.encode("utf-8")).hexdigest()
        (staging / MANIFEST).write_text(json.dumps({"files": digests}, indent=2) + "\n", encoding="utf-8")
        return replace_folder(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def load_prepared(folder: str | Path) -> dict[str, list[Record]]:
    """Read the splits written by `save_prepared`, after checking each file against the manifest:
    a set mixed from two runs (or edited by hand) is refused, since it could leak test records into
    training. Raises FileNotFoundError naming what is missing, ValueError naming a file that does
    not match."""
    folder = Path(folder)
    missing = [s for s in SPLITS if not (folder / f"{s}.jsonl").exists()]
    if missing:
        raise FileNotFoundError(f"{folder}: no prepared {', '.join(missing)} split(s); run chapter 03_data first")
    if not (folder / MANIFEST).exists():
        raise FileNotFoundError(f"{folder}: no {MANIFEST}; prepare the data again (chapter 03_data)")
    manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))["files"]
    for name, digest in manifest.items():
        if hashlib.sha256((folder / name).read_bytes()).hexdigest() != digest:
            raise ValueError(f"{folder / name} does not match {folder / MANIFEST}: the prepared set was changed or "
                             "mixed with another run's; prepare the data again (chapter 03_data)")
    from .artifacts import read_jsonl

    return {split: [Record(**row) for row in read_jsonl(folder / f"{split}.jsonl")] for split in SPLITS}


def split_files(folder: str | Path) -> dict[str, Path]:
    """{split: path} for train/val/test in `folder`, each as .jsonl or .json.

    Raises FileNotFoundError naming the folder and the split that is missing, ValueError when a
    split has both a .jsonl and a .json file.
    """
    folder = Path(folder)
    files = {}
    for split in SPLITS:
        found = [folder / f"{split}{ext}" for ext in (".jsonl", ".json") if (folder / f"{split}{ext}").exists()]
        if not found:
            raise FileNotFoundError(f"{folder}: no {split}.jsonl or {split}.json")
        if len(found) > 1:
            raise ValueError(f"{folder}: both {found[0].name} and {found[1].name}; keep one, so no record is "
                             "silently ignored")
        files[split] = found[0]
    return files
