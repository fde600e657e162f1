"""Writing run artifacts safely: every file is written to a temporary name and renamed.

A reader (a notebook cell polling training-status.json, a rerun after Ctrl-C) never sees a
half-written file: os.replace is atomic on POSIX and Windows within one filesystem.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` (UTF-8) to `path` via a temporary file in the same folder, then rename."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` via a temporary file in the same folder, then rename: a reader finds
    the old file or the whole new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def replace_folder(staging: str | Path, target: str | Path) -> Path:
    """Move the complete folder `staging` to `target`; an older `target` is removed only after.

    Between the two renames a reader finds the old folder under .<name>.old, never a partial one.
    """
    import shutil

    staging, target = Path(staging), Path(target)
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
        staging.rename(target)
        shutil.rmtree(old)
    else:
        staging.rename(target)
    return target


def write_json(path: str | Path, obj: Any) -> Path:
    """Atomically write `obj` as indented JSON."""
    return atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> Path:
    """Atomically write one JSON object per line."""
    return atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_json(path: str | Path) -> Any:
    """The JSON value in `path` (UTF-8). Raises FileNotFoundError, and json.JSONDecodeError whose
    message names the file, line and column of what is not JSON."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise json.JSONDecodeError(f"{path}: {error.msg}", error.doc, error.pos) from None


def read_jsonl(path: str | Path, torn_tail_ok: bool = False, what: str = "line") -> list:
    """One JSON value per non-empty line. A line that is not JSON raises ValueError naming
    file:line ("not a JSON <what>"), except, with `torn_tail_ok`, the last line of a file that a
    killed process was appending to, which is left out."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError:
            if torn_tail_ok and number == len(lines):
                break
            raise ValueError(f"{path}:{number}: not a JSON {what}") from None
    return rows


@contextlib.contextmanager
def file_lock(path: str | Path):
    """An exclusive advisory lock (fcntl.flock, Linux and macOS) on `path` (created if missing),
    held while the context is open; another process asking for it waits."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_once(target: str | Path, build, complete=lambda folder: (folder / "config.json").exists()) -> Path:
    """The folder `target`, built by `build(staging_folder)` unless it is already `complete`.

    Safe with several processes at once: a lock file next to the target lets one build while the
    others wait (and then find it complete); each build writes into its own staging folder and
    moves it into place only when done; staging folders left by a killed build are removed under
    the lock. A complete target is never deleted or replaced, so a process reading it keeps it.
    """
    import shutil

    target = Path(target)
    if complete(target):
        return target
    with file_lock(target.with_name(f".{target.name}.lock")):
        if complete(target):  # another process built it while this one waited
            return target
        for stale in target.parent.glob(f".{target.name}.building-*"):
            shutil.rmtree(stale, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.building-", dir=target.parent))
        try:
            build(staging)
            if target.exists():  # an incomplete leftover: nothing can be using it as a model
                shutil.rmtree(target)
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target
