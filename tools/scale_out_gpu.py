"""Scale-out on GPUs: the Trinity at 1, 2 and 4 GPUs (DDP), and the 27B sharded by FSDP2 under a cap.

    python -m tools.scale_out_gpu .gpu-tokenizer --out data/measurements/scale-out-gpu.json

Chapter 11's multi-GPU measurements. Each row is `tools.gpu_benchmark --one peft` (the course's
`lib.training.load_for_training` and `train`: NF4 + double quant, r=64, rsLoRA, DoRA, gradient
checkpointing, the course's data) on a random-init Gemma 3 of the reference table's shapes,
started through `lib.distributed.launch_command`: a plain process for one GPU, accelerate's DDP
for several (NCCL, the batch per GPU fixed, so the global batch grows with the GPUs: weak
scaling; the course's records are mostly shorter than the sequence length, so a step holds
fewer tokens than batch x seq). Scaling efficiency = tokens/s at N GPUs / (N x tokens/s at one
GPU), where transformers' Trainer counts the tokens of every process; memory is each process's
peak reserved.

`--fsdp SIZE` adds the run that does not fit one card: SIZE (27B) sharded by FSDP2 over
`--fsdp-gpus` processes, each allocator capped to `--cap`'s usable memory (an L4's 24 GB, as
chapter 05 caps it), with what an FSDP launch needs (4-bit storage in the compute dtype, torch
AdamW, peft's DoRA, whose norm is computed inside the sharded forward). A row records an error
("CUDA out of memory" included) instead of stopping the table. unsloth is not used: it trains on
one GPU.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lib.artifacts import write_json  # noqa: E402
from tools.memory_grid import provenance, random_init_checkpoint_apart  # noqa: E402

SHAPES = {"4B": 2048, "12B": 4096, "27B": 4096}  # tokens per sequence, as in tools.dora_benchmark


def run_row(model_dir: Path, size: str, processes: int, steps: int, batch: int, work: Path, fsdp: bool = False,
            cap: str | None = None) -> dict:
    """One launch of `tools.gpu_benchmark --one peft`; its stats, or the error it ended with."""
    from lib.distributed import launch_command

    arguments = [str(model_dir), "--one", "peft", "--steps", str(steps), "--batch-size", str(batch),
                 "--max-seq-length", str(SHAPES[size]), "--work", str(work)]
    if fsdp:
        arguments += ["--optim", "adamw_torch", "--dora", "peft"]
    if cap:
        arguments += ["--cap", cap]
    command = launch_command("tools.gpu_benchmark", arguments, processes, fsdp=fsdp)
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    row = {"size": size, "seq": SHAPES[size], "batch_per_gpu": batch, "processes": processes,
           "mode": "FSDP2" if fsdp else "DDP", "cap": cap}
    stats = [json.loads(line[6:]) for line in done.stdout.splitlines() if line.startswith("STATS ")]
    if done.returncode or not stats:
        errors = [line for line in done.stderr.splitlines() if "Error" in line]
        print(done.stdout[-2000:], done.stderr[-4000:], flush=True)
        return row | {"error": (errors or done.stderr.strip().splitlines() or ["?"])[-1][-600:]}
    last = stats[-1]  # every process prints its own; the peaks are per process
    return row | {"steady_seconds_per_step": last["steady_seconds_per_step"],
                  "steady_tokens_per_second": last["steady_tokens_per_second"],
                  "first_step_seconds": last["first_step_seconds"],
                  "peak_reserved_gib_by_process": [s["peak_memory_gib"] for s in stats],
                  "allocator_cap_gib": last["cap"].get("allocator_cap_gib")}


def with_efficiency(rows: list[dict]) -> list[dict]:
    """Each DDP row's scaling efficiency against the one-GPU row of its size (None without one)."""
    one = {r["size"]: r.get("steady_tokens_per_second") for r in rows if r["mode"] == "DDP" and r["processes"] == 1}
    for r in rows:
        base, tps = one.get(r["size"]), r.get("steady_tokens_per_second")
        ddp = r["mode"] == "DDP" and base and tps
        r["scaling_efficiency"] = round(tps / (r["processes"] * base), 3) if ddp else None
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tokenizer_dir", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--sizes", nargs="+", default=["4B", "12B"], choices=sorted(SHAPES))
    parser.add_argument("--gpus", nargs="+", type=int, default=[1, 2, 4])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=1, help="sequences per GPU and step")
    parser.add_argument("--fsdp", choices=sorted(SHAPES), help="also shard this size with FSDP2 (27B)")
    parser.add_argument("--fsdp-gpus", type=int, default=2)
    parser.add_argument("--cap", default="L4", help="the FSDP row's GPU profile (lib.memory.GPU_PROFILES)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/scale-out-gpu"))
    args = parser.parse_args(argv)
    import torch

    available = torch.cuda.device_count()
    models = args.work / "models"
    rows = []
    for size in args.sizes:
        model_dir = random_init_checkpoint_apart(size, args.tokenizer_dir, models)
        for n in [n for n in args.gpus if n <= available]:
            rows.append(run_row(model_dir, size, n, args.steps, args.batch_size, args.work / f"{size}-ddp{n}"))
            print(json.dumps(rows[-1]), flush=True)
    if args.fsdp and args.fsdp_gpus <= available:
        model_dir = random_init_checkpoint_apart(args.fsdp, args.tokenizer_dir, models)
        rows.append(run_row(model_dir, args.fsdp, args.fsdp_gpus, args.steps, args.batch_size,
                            args.work / f"{args.fsdp}-fsdp", fsdp=True, cap=args.cap))
        print(json.dumps(rows[-1]), flush=True)
    skipped = sorted({n for n in args.gpus if n > available}
                     | ({args.fsdp_gpus} if args.fsdp and args.fsdp_gpus > available else set()))
    record = {"provenance": provenance(" ".join(["python -m tools.scale_out_gpu", *(argv or sys.argv[1:])]))
              | {"gpus_on_machine": available, "not_run_for_lack_of_gpus": skipped},
              "rows": with_efficiency(rows)}
    write_json(args.out, record)
    print("| size | mode | GPUs | s/step | tokens/s | efficiency | peak reserved GiB per GPU |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['size']} @{r['seq']} | {r['mode']} | {r['processes']} | " + (
            f"error: {r['error'][:120]} |" if "error" in r else
            f"{r['steady_seconds_per_step']} | {r['steady_tokens_per_second']} | {r['scaling_efficiency']} | "
            f"{', '.join(f'{g:.2f}' for g in r['peak_reserved_gib_by_process'])} |"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
