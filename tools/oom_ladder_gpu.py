"""Run the OOM ladder for real on a GPU capped to a T4's memory (chapter 05's transcript).

    python -m tools.oom_ladder_gpu TOKENIZER_DIR --out data/measurements/oom-ladder-gpu.json

The process's allocator is capped with torch.cuda.set_per_process_memory_fraction to what a T4
leaves PyTorch (`lib.memory.GPU_PROFILES["T4"]` minus the CUDA context measured here), so real
"CUDA out of memory" errors happen where a T4 would raise them. Models are random-init Gemma 3
text models of the real shapes (tools.memory_grid.random_init_checkpoint). Each scenario runs in
its own process (unsloth patches transformers at import); inside it, `lib.oom_ladder.run_ladder`
loads, trains 3 steps, and on an OOM frees and steps down, recording what stayed allocated.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lib.artifacts import write_json  # noqa: E402

SCENARIOS = [  # (name, model size, run spec fields, start)
    ("4B, peft, Trinity 4096, source protocol", "4B", {"backend": "peft"}, "top"),
    ("12B, unsloth, Trinity 4096, source protocol", "12B", {"backend": "unsloth"}, "top"),
    ("12B, unsloth, Trinity 8192, source protocol", "12B", {"backend": "unsloth", "max_seq_length": 8192}, "top"),
    ("12B, peft, Trinity 4096, estimator first", "12B", {"backend": "peft"}, "predicted"),
]


def run_scenario(index: int, work: Path, gpu: str) -> dict:
    name, size, settings, start = SCENARIOS[index]
    if settings["backend"] == "unsloth":
        import unsloth  # noqa: F401

    from lib.memory import gpu_run
    from lib.oom_ladder import probe_attempt, run_ladder
    from tools.memory_grid import cap_allocator

    cap = cap_allocator(gpu)
    started = time.time()
    result = run_ladder(gpu_run(size, **settings), cap["budget_gib"],
                        probe_attempt(str(work / "models" / size)), start=start)
    return {"scenario": name, "start": start, **{k: v for k, v in cap.items() if k != "capped_to"},
            "seconds": round(time.time() - started, 1), "attempts": result.rows()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tokenizer_dir", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/memory-grid"))
    parser.add_argument("--gpu", default="T4")
    parser.add_argument("--scenarios", type=int, nargs="*", help="indexes into SCENARIOS (default: all)")
    parser.add_argument("--scenario", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.scenario is not None:
        print("SCENARIO " + json.dumps(run_scenario(args.scenario, args.work, args.gpu)), flush=True)
        return 0
    from tools.memory_grid import provenance, random_init_checkpoint_apart

    for size in dict.fromkeys(s[1] for s in SCENARIOS):  # apart: this process holds no CUDA context
        random_init_checkpoint_apart(size, args.tokenizer_dir, args.work / "models")
    # one line per scenario as soon as it ends, so a run cut short keeps what it measured
    lines_file = args.out.with_suffix(".jsonl")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for index in args.scenarios if args.scenarios is not None else range(len(SCENARIOS)):
        done = subprocess.run([sys.executable, "-m", "tools.oom_ladder_gpu", str(args.tokenizer_dir), "--out",
                               str(args.out), "--work", str(args.work), "--gpu", args.gpu, "--scenario", str(index)],
                              cwd=ROOT, capture_output=True, text=True)
        lines = [l for l in done.stdout.splitlines() if l.startswith("SCENARIO ")]
        log = [l for l in done.stdout.splitlines() if l.startswith(("skip", "OOM", "ok"))]
        print(SCENARIOS[index][0], *log, sep="\n  ", flush=True)
        if not lines:
            print(done.stderr[-3000:])
            transcript = {"scenario": SCENARIOS[index][0], "error": done.stderr.strip().splitlines()[-1:]}
        else:
            transcript = json.loads(lines[-1][9:]) | {"log": log}
        with lines_file.open("a") as f:
            f.write(json.dumps(transcript) + "\n")
    transcripts = [json.loads(line) for line in lines_file.read_text().splitlines()]
    command = "python -m tools.oom_ladder_gpu " + " ".join(argv if argv is not None else sys.argv[1:])
    record = {"provenance": provenance(command) | {"capped_to": args.gpu}, "scenarios": transcripts}
    write_json(args.out, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
