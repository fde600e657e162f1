"""Store a finished default run's measurements with their provenance, for the README.

    python -m tools.collect_run --out data/measurements/course-run-cpu.json [--log make-course.log]
        [--run output/default] [--executed _build/executed] [--note "..."]
        [--ghost-out data/measurements/ghost-architect-cpu.json]

Reads what `make course` left: the per-chapter seconds and peak RSS (`timings.json`), the
training stats, evaluation results, export table and gates, the Ghost Architect's metrics and
every chapter's claims-ledger records; with --log, the whole command's seconds (the
`exit N seconds S` line the README's timing wrapper appends). Writes one JSON file (atomically);
--ghost-out also writes the Ghost Architect's part, with the same provenance, on its own.
Raises FileNotFoundError naming the first missing input.
"""

from __future__ import annotations

import argparse
import platform
import re
import subprocess
import sys
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "unsloth", "unsloth_zoo", "trl",
            "rapidocr", "onnxruntime", "llama_cpp_python", "sqlglot", "papermill", "jupyter-book")


def _read(path: Path):
    from lib.artifacts import read_json

    if not path.exists():
        raise FileNotFoundError(f"{path}: not written by the run (did every chapter execute?)")
    return read_json(path)


def collect(run: Path, executed: Path, log: Path | None, note: str) -> dict:
    from lib.claims import read_records
    from lib.environment import package_versions

    timings = _read(executed / "timings.json")
    whole = None
    if log is not None:
        match = re.findall(r"exit (\d+) seconds (\d+)", log.read_text(errors="replace"))
        whole = {"exit": int(match[-1][0]), "seconds": int(match[-1][1])} if match else None
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    evaluation = _read(run / "metrics" / "evaluation.json")
    ghost = _read(run / "metrics" / "ghost-architect.json")
    return {
        "provenance": {"date": date.today().isoformat(), "commit": commit, "python": platform.python_version(),
                       "cpu": timings["cpu"], "compute_dtype": timings["compute_dtype"], "versions": package_versions(PACKAGES),
                       "command": "make course (python -m tools.course all), default parameters", "note": note},
        "whole_command": whole,
        "chapters": timings["chapters"],
        "chapters_seconds_total": round(sum(c["seconds"] for c in timings["chapters"].values()), 1),
        "training": {k: v for k, v in _read(run / "metrics" / "training-stats.json").items() if k != "config"},
        "evaluation": {"results": evaluation["results"], "seconds": evaluation.get("seconds")},
        "gates": _read(run / "metrics" / "gates.json"),
        "export_gates": _read(run / "metrics" / "export-gates.json"),
        "ghost_architect": {k: ghost[k] for k in ("scores", "seconds", "ocr_seconds", "reading", "training")},
        "claims": [r.__dict__ for r in read_records(run)],
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--run", type=Path, default=ROOT / "output" / "default")
    parser.add_argument("--executed", type=Path, default=ROOT / "_build" / "executed")
    parser.add_argument("--log", type=Path, default=None)
    parser.add_argument("--note", default="")
    parser.add_argument("--ghost-out", type=Path, default=None)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from lib.artifacts import write_json

    collected = collect(args.run, args.executed, args.log, args.note)
    write_json(args.out, collected)
    print(f"wrote {args.out}")
    if args.ghost_out:
        ghost = _read(args.run / "metrics" / "ghost-architect.json")
        write_json(args.ghost_out, {"provenance": collected["provenance"] | {
            "chapter": "08_ghost_architect", "seconds": collected["chapters"].get("08_ghost_architect")},
            **{k: v for k, v in ghost.items() if k != "examples"}})
        print(f"wrote {args.ghost_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
