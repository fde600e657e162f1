"""The one-GPU launch path on a CUDA GPU, and the run spec's GPU branches.

    python -m tools.launch_gpu_check .gpu-tokenizer --out data/measurements/launch-gpu.json

1. One short adapter run of a random-init Gemma 3 270M (the real config; weights do not matter for
   the check and cannot travel to an offline GPU machine) twice: as a plain process and under
   `accelerate launch --num_processes 1` (`lib.distributed.launch_command(..., accelerate=True)`),
   the command a single-GPU user of chapter 11 runs. Same spec, data and seed: the losses and the
   adapters (SHA-256 of the trainable tensors) are compared. Then once more under accelerate's
   FSDP2 (`launch_command(..., fsdp=True)`): losses, saved adapter and update norms against the
   plain run.
2. `tools.gpu_benchmark` for unsloth and peft at a few steps: `lib.training.load_for_training(spec)`
   and `train(..., spec, ...)` on the GPU, where the CPU tests cannot go.

Prints one table and writes the measurements with their provenance to --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from dataclasses import replace
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def launch_pair(model_dir: Path, work: Path, steps: int) -> dict:
    """The plain and the accelerate-launched run of one spec, and how far apart they ended."""
    from lib.adapter_runs import SHORT_RUN, AdapterRun, run_in_fresh_process

    spec = SHORT_RUN.replace(model=str(model_dir), rank=16, max_steps=steps, batch_size=4, max_seq_length=256,
                             compute_dtype="bfloat16", learning_rate=1e-3)
    run = AdapterRun("plain", spec, track_every=0, eval_records=8)
    plain = run_in_fresh_process(run, work / "plain")
    launched = run_in_fresh_process(replace(run, name="accelerate"), work / "accelerate", accelerate=True)
    losses = {name: [e["loss"] for e in result["log"]] for name, result in (("plain", plain), ("accelerate", launched))}
    difference = max(abs(a - b) / abs(a) for a, b in zip(losses["plain"], losses["accelerate"]))
    return {"spec": run.to_dict(), "losses": losses, "largest_relative_loss_difference": difference,
            "same_adapter": plain["adapter_sha256_by_process"] == launched["adapter_sha256_by_process"],
            "processes": [plain["processes"], launched["processes"]],
            "peak_memory_gib": [plain["peak_memory_gib"], launched["peak_memory_gib"]],
            "peak_memory_measure": plain["peak_memory_measure"],
            "train_seconds": [plain["train_seconds"], launched["train_seconds"]],
            "test_loss": [plain["test_loss"]["loss"], launched["test_loss"]["loss"]],
            "fsdp": fsdp_run(run, work)}


def fsdp_run(run, work: Path) -> dict:
    """The same run under `accelerate launch --use_fsdp --fsdp_version 2` in one process (the
    Trainer's FSDP2 path: sharding, the 4-bit storage in the compute dtype, the gathered adapter
    saved on rank 0), against a plain run with the same optimizer: an FSDP launch trains with
    torch's AdamW (`TrainingConfig.optimizer_for`), the plain run on a GPU with bitsandbytes' 8-bit
    one, so `plain` itself would differ by the optimizer. An error is recorded, not raised."""
    from lib.adapter_runs import run_in_fresh_process
    from lib.fsdp import adapter_difference

    same_optimizer = replace(run, name="plain-adamw", spec=run.spec.replace(optim="adamw_torch"))
    plain = run_in_fresh_process(same_optimizer, work / "plain-adamw")
    try:
        sharded = run_in_fresh_process(replace(same_optimizer, name="fsdp"), work / "fsdp", fsdp=True)
    except RuntimeError as err:
        # the launcher's last lines only say that rank 0 failed; the worker's own error is above them
        log = (work / "fsdp" / "worker.log").read_text(encoding="utf-8", errors="replace").splitlines()
        causes = [line for line in log if line.startswith("[rank0]: ") and "Error" in line]
        return {"error": causes[-1].removeprefix("[rank0]: ") if causes else str(err)[-4000:]}
    losses = [e["loss"] for e in sharded["log"]]
    return {"losses": losses, "largest_relative_loss_difference": max(
                abs(a - b) / abs(a) for a, b in zip([e["loss"] for e in plain["log"]], losses)),
            "compared_with": "a plain run with optim adamw_torch",
            "adapter_relative_difference": adapter_difference(work / "fsdp" / "adapter", work / "plain-adamw" / "adapter"),
            "processes": sharded["processes"], "peak_memory_gib": sharded["peak_memory_gib"],
            "train_seconds": sharded["train_seconds"], "test_loss": sharded["test_loss"]["loss"],
            "update_norms_relative_difference": max(
                abs(a["relative_update"] - b["relative_update"]) / abs(b["relative_update"])
                for a, b in zip(sharded["update_norms"], plain["update_norms"]))}


def benchmark(model_dir: Path, work: Path, steps: int) -> list[dict]:
    """`tools.gpu_benchmark`'s run of each backend, one fresh process each (unsloth patches on import)."""
    rows = []
    for backend in ("unsloth", "peft"):
        done = subprocess.run([sys.executable, "-m", "tools.gpu_benchmark", str(model_dir), "--one", backend,
                               "--steps", str(steps), "--work", str(work / "benchmark")],
                              cwd=ROOT, capture_output=True, text=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith("STATS ")]
        if done.returncode or not lines:
            print(done.stdout[-3000:], done.stderr[-6000:])
            rows.append({"backend": backend, "error": (done.stderr.strip().splitlines() or ["?"])[-1]})
            continue
        stats = json.loads(lines[-1][6:])
        rows.append({"backend": backend} | {k: stats.get(k) for k in (
            "steps", "first_step_seconds", "steady_seconds_per_step", "steady_tokens_per_second", "peak_memory_gib",
            "first_loss", "final_loss", "compute_dtype")})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tokenizer_dir", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/launch-gpu-check"))
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--launch-only", action="store_true", help="the launches of step 1, not the benchmark")
    args = parser.parse_args(argv)
    import torch

    from lib.environment import package_versions
    from tools.memory_grid import random_init_checkpoint

    model_dir = random_init_checkpoint("270M", args.tokenizer_dir, args.work / "models")
    pair = launch_pair(model_dir, args.work, args.steps)
    rows = [] if args.launch_only else benchmark(model_dir, args.work, args.steps)
    print(f"one GPU, plain vs accelerate launch: largest relative loss difference "
          f"{pair['largest_relative_loss_difference']:.2e}, same adapter: {pair['same_adapter']}, "
          f"peak {pair['peak_memory_gib']} GiB ({pair['peak_memory_measure']})")
    print("one GPU, plain vs FSDP2 launch:", json.dumps(pair["fsdp"]))
    for row in rows:
        print(json.dumps(row))
    provenance = {"date": date.today().isoformat(), "gpu": torch.cuda.get_device_name(0),
                  "python": platform.python_version(), "versions": package_versions(),
                  "command": "python -m tools.launch_gpu_check .gpu-tokenizer --out ... "
                             f"--steps {args.steps}" + (" --launch-only" if args.launch_only else "")}
    record = {"provenance": provenance, "launch": pair, "backends": rows}
    if args.launch_only and args.out.exists():  # keep the stored benchmark, under its own provenance
        stored = json.loads(args.out.read_text())
        record |= {"backends": stored["backends"],
                   "backends_provenance": stored.get("backends_provenance", stored["provenance"])}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
