"""Benchmark the training chapter's code on a CUDA GPU: tokens/s and peak reserved memory.

    python -m tools.gpu_benchmark MODEL_DIR --steps 40 --backends unsloth peft

MODEL_DIR holds a Gemma 3 config and tokenizer (no weights needed), e.g. a copy of the embedded
model's cache folder (~/.cache/gemma-trinity-course/gemma-3-270m) without model.safetensors, so
that it travels to a GPU machine with no network. The model is random-initialised
from the real Gemma 3 270M config, because speed and memory do not depend on weight values, and
the 270M weights (253 MB) cannot travel to an offline GPU machine. Data, tokenizer, Trinity
settings and training code are the course's own (`lib.training.train`), one fresh process per
backend so that unsloth's patches do not leak into the peft run.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def random_init_model(model_dir: Path, target: Path) -> Path:
    """Save a random-init Gemma 3 with `model_dir`'s config and tokenizer to `target` (bf16)."""
    import shutil

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if (target / "model.safetensors").exists():
        return target
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir), dtype=torch.bfloat16)
    model.save_pretrained(target)
    for item in model_dir.iterdir():
        if item.name.startswith(("tokenizer", "chat_template", "special_tokens")):
            shutil.copy(item, target / item.name)
    return target


def run_one(model_dir: Path, backend: str, steps: int, batch_size: int, max_seq_length: int, run_dir: Path,
            optim: str = "adamw_8bit", dora_implementation: str = "fast", cap: str | None = None) -> dict:
    """Train `steps` steps with one backend in this process; returns the training stats, with the
    seconds of each phase before training (printed as they end: a killed run still shows them).
    `cap` names a `lib.memory` GPU profile whose usable memory this process's allocator is capped
    to (`tools.memory_grid.cap_allocator`). Under `accelerate launch` every process runs this."""
    import time

    phases, started = {}, time.perf_counter()
    record_cache_bypasses()

    def phase(name):
        nonlocal started
        phases[name] = round(time.perf_counter() - started, 1)
        print(f"PHASE {name} {phases[name]} s", flush=True)
        started = time.perf_counter()

    if backend == "unsloth":
        import unsloth  # noqa: F401  (must be imported before transformers to patch it)

    sys.path.insert(0, str(ROOT))
    from lib.data import prepare_dataset, split_files
    from lib.model import ModelSource, load_tokenizer
    from lib.run_spec import RunSpec
    from lib.training import load_for_training, read_log, train

    phase("import")
    capped = {}
    if cap:
        import os

        import torch

        from tools.memory_grid import cap_allocator

        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))  # the cap is per device: this process's
        capped = cap_allocator(cap)
    source = ModelSource("gemma-3-270m (random init)", str(model_dir), "local")
    tokenizer = load_tokenizer(source)
    records = prepare_dataset(split_files(ROOT / "data" / "python-stdlib"), tokenizer, max_seq_length).records
    phase("dataset")
    spec = RunSpec.of(str(model_dir), backend=backend, compute_dtype="bfloat16", max_steps=steps,
                      batch_size=batch_size, max_seq_length=max_seq_length, save_steps=0, sample_every=0,
                      optim=optim, warmup_steps=2, dora_implementation=dora_implementation)
    model, tokenizer = load_for_training(spec)
    phase("load_for_training")
    result = train(model, tokenizer, records["train"], spec, run_dir, "cuda", resume=False)
    first_step = read_log(run_dir)[0]["train_runtime"]
    return (result.stats | {"first_step_seconds": round(first_step, 1), "phase_seconds": phases, "cap": capped}
            | steady_state(read_log(run_dir), warmup_steps=min(5, steps - 1)) | {"compilation": compilation_report()})


_cache_bypasses: list[str] = []


def record_cache_bypasses() -> None:
    """Keep why AOTAutograd's cache was bypassed (torch logs it at INFO, one line per graph): a
    bypassed graph's joint forward/backward is traced again in every process, warm caches or not."""
    import logging

    class Keep(logging.Handler):
        def emit(self, record):
            _cache_bypasses.append(record.getMessage()[:300])

    logger = logging.getLogger("torch._functorch._aot_autograd.autograd_cache")
    logger.setLevel(logging.INFO)
    logger.addHandler(Keep(logging.INFO))
    logger.propagate = False  # torch's handlers would print every cache lookup at INFO


def compilation_report() -> dict:
    """Where torch.compile spent this process's time: seconds per dynamo-timed phase (summed over
    every graph); the counts of frames, graphs, recompiles and graph breaks; the hits, misses and
    bypasses of AOTAutograd's and inductor's caches, and the reasons for bypasses
    (`record_cache_bypasses`)."""
    from collections import Counter

    from torch._dynamo.utils import compilation_time_metrics, counters

    seconds = {name: round(sum(values), 2) for name, values in compilation_time_metrics.items()}
    counts = {group: dict(counters[group]) for group in ("frames", "stats", "recompiles", "graph_break") if counters[group]}
    caches = {f"{group}.{name}": n for group in ("aot_autograd", "inductor") for name, n in counters[group].items()
              if "cache" in name}
    bypasses = Counter(message for message in _cache_bypasses if "bypass" in message.lower())
    return {"seconds": dict(sorted(seconds.items(), key=lambda kv: -kv[1])[:12]), "counts": counts,
            "caches": caches, "cache_bypass_reasons": dict(bypasses.most_common(8))}


def steady_state(log: list[dict], warmup_steps: int) -> dict:
    """Seconds per step and tokens/s after the first `warmup_steps` (compilation, allocator warm-up)."""
    first, last = log[warmup_steps - 1], log[-1]
    seconds = last["train_runtime"] - first["train_runtime"]
    tokens = last["num_input_tokens_seen"] - first["num_input_tokens_seen"]
    return {"steady_seconds_per_step": round(seconds / (last["step"] - first["step"]), 3),
            "steady_tokens_per_second": round(tokens / seconds, 1), "warmup_steps": warmup_steps}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-seq-length", type=int, default=384)
    parser.add_argument("--backends", nargs="+", default=["unsloth", "peft"])
    parser.add_argument("--work", type=Path, default=Path("/tmp/gpu-benchmark"))
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--optim", default="adamw_8bit", help="with --one: the optimizer (adamw_torch under FSDP)")
    parser.add_argument("--dora", default="fast", choices=("fast", "peft"), help="with --one: the DoRA implementation")
    parser.add_argument("--cap", help="with --one: cap the allocator to this GPU profile's memory (lib.memory)")
    args = parser.parse_args(argv)
    if args.one:
        stats = run_one(args.model_dir, args.one, args.steps, args.batch_size, args.max_seq_length,
                        args.work / f"run-{args.one}", args.optim, args.dora, args.cap)
        print("STATS " + json.dumps(stats))
        return 0
    import torch

    model = random_init_model(args.model_dir, args.work / "model")
    rows = []
    for backend in args.backends:
        done = subprocess.run([sys.executable, "-m", "tools.gpu_benchmark", str(model), "--one", backend,
                               "--steps", str(args.steps), "--batch-size", str(args.batch_size),
                               "--max-seq-length", str(args.max_seq_length), "--work", str(args.work)],
                              cwd=ROOT, capture_output=True, text=True)
        lines = [l for l in done.stdout.splitlines() if l.startswith("STATS ")]
        if done.returncode or not lines:
            print(done.stdout[-3000:], done.stderr[-6000:])
            rows.append({"backend": backend, "error": done.stderr.strip().splitlines()[-1] if done.stderr else "?"})
            continue
        stats = json.loads(lines[-1][6:])
        print(f"{backend} compilation: {json.dumps(stats.get('compilation'))}", flush=True)
        rows.append({"backend": backend, "steps": stats["steps"],
                     "first_step_seconds": stats["first_step_seconds"],
                     "steady_seconds_per_step": stats["steady_seconds_per_step"],
                     "steady_tokens_per_second": stats["steady_tokens_per_second"],
                     "peak_reserved_gib": stats["peak_memory_gib"]})
    sys.path.insert(0, str(ROOT))
    from lib.environment import package_versions

    versions = package_versions()
    provenance = {"date": date.today().isoformat(), "gpu": torch.cuda.get_device_name(0),
                  "python": platform.python_version(), "versions": versions,
                  "setup": f"Gemma 3 270M shapes (random init), Trinity r=64 alpha=32 rsLoRA DoRA, NF4, batch "
                           f"{args.batch_size}, max_seq_length {args.max_seq_length}, stdlib dataset, adamw_8bit"}
    print(json.dumps({"provenance": provenance, "rows": rows}, indent=2))
    print("| backend | steps | first step s | s/step after warm-up | tokens/s after warm-up | peak reserved GiB |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['backend']} | {r.get('steps')} | {r.get('first_step_seconds')} | {r.get('steady_seconds_per_step')} "
              f"| {r.get('steady_tokens_per_second')} | {r.get('peak_reserved_gib')} |"
              if "error" not in r else f"| {r['backend']} | error: {r['error']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
