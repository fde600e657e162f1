"""Measure the source claims that need a GPU (issue 22): full fine-tuning memory (C01), the Trinity's
tokens/s and step times at the course data's lengths (C18, C23, C30), and the load time of a
pre-quantized bitsandbytes 4-bit checkpoint against quantizing a 16-bit one at load (C29).

    python -m tools.claims_gpu TOKENIZER_DIR --out data/measurements/claims-gpu.json [--jobs full_ft trinity load]

Every job runs in its own process on a random-init model of the real Gemma 3 text shape
(`tools.memory_grid.random_init_checkpoint`; speed and memory do not depend on weight values),
one after another on one GPU; peak = torch.cuda.max_memory_allocated since the job's start.

* full_ft: every parameter trained with torch AdamW, gradient checkpointing, batch 1 at 1024
  tokens, (a) "mixed": fp32 weights, bf16 autocast (the usual mixed precision: fp32 master
  weights, gradients and AdamW states); (b) "bf16": bf16 weights, gradients and AdamW states. The
  weights, gradients and optimizer state are also counted tensor by tensor.
* trinity: the course's Trinity (NF4 + double quant, r=64, alpha=32, rsLoRA, fast DoRA, 7 modules,
  8-bit AdamW, unsloth's offloaded checkpointing) through `lib.training.load_for_training`, batch 1,
  random tokens, at several sequence lengths in one process: 2 warm-up steps then 5 timed ones each.
* load: from_pretrained of the 16-bit checkpoint quantized to NF4 at load, then of the same model
  saved pre-quantized (bitsandbytes' 4-bit serialization); the files were just written, so they
  are read from the page cache: this times the loading work, not a download or a disk.
Rows are appended to <work>/rows.jsonl as they finish (a rerun skips those done).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lib.artifacts import write_json  # noqa: E402
from tools.memory_grid import cuda_context_gib, provenance, random_init_checkpoint, tensor_bytes  # noqa: E402

JOBS = {
    "full_ft": [{"kind": "full_ft", "size": size, "mode": mode, "seq": 1024}
                for size in ("270M", "1B") for mode in ("mixed", "bf16")],
    "trinity": [{"kind": "trinity", "size": "4B", "seqs": [256, 512, 1024]},
                {"kind": "trinity", "size": "12B", "seqs": [512, 1024]}],  # each new length compiles anew: ~100 s
    "load": [{"kind": "load", "size": "12B"}],
}


def timed_steps(step, warmup: int, steps: int) -> list[float]:
    import torch

    times = []
    for _ in range(warmup + steps):
        torch.cuda.synchronize()
        started = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return times


def full_ft(size: str, mode: str, seq: int, model_dir: Path) -> dict:
    """Full fine-tuning of every parameter; see the module docstring."""
    import torch
    from transformers import AutoModelForCausalLM

    from lib.memory import optimizer_state_bytes

    torch.cuda.reset_peak_memory_stats()
    dtype = torch.float32 if mode == "mixed" else torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).cuda()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    vocab = model.get_input_embeddings().weight.shape[0]
    counted = {}

    def step():
        ids = torch.randint(0, vocab, (1, seq), device="cuda")
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=mode == "mixed"):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        counted["gradients"] = tensor_bytes(p.grad for p in model.parameters() if p.grad is not None)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    times = timed_steps(step, 1, 3)
    parameters = sum(p.numel() for p in model.parameters())
    return {"parameters": parameters, "weights_gib": tensor_bytes(model.parameters()) / 2**30,
            "gradients_gib": counted["gradients"] / 2**30, "optimizer_gib": optimizer_state_bytes(optimizer) / 2**30,
            "peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30,
            "step_seconds": statistics.median(times[1:])}


def trinity(size: str, seqs: list[int], model_dir: Path) -> dict:
    """The course's Trinity under unsloth, one load, every sequence length in turn (see the module
    docstring); {"by_seq": [{seq, step_seconds, tokens_per_second, peak_allocated_gib}], ...}."""
    started = time.perf_counter()
    import unsloth  # noqa: F401  (patches transformers; must come first)
    import torch

    from lib.oom_ladder import make_optimizer
    from lib.run_spec import RunSpec
    from lib.training import load_for_training

    model, _ = load_for_training(RunSpec.of(str(model_dir), backend="unsloth", compute_dtype="bfloat16",
                                            max_seq_length=max(seqs)))
    model.train()
    load_seconds = time.perf_counter() - started
    optimizer = make_optimizer("adamw_8bit", [p for p in model.parameters() if p.requires_grad])
    vocab = model.get_input_embeddings().weight.shape[0]
    by_seq = []
    for seq in seqs:
        def step():
            ids = torch.randint(0, vocab, (1, seq), device="cuda")
            model(input_ids=ids, labels=ids).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        torch.cuda.reset_peak_memory_stats()
        times = timed_steps(step, 2, 5)
        by_seq.append({"seq": seq, "first_step_seconds": round(times[0], 2),
                       "step_seconds": round(statistics.median(times[2:]), 4),
                       "tokens_per_second": round(seq / statistics.median(times[2:]), 1),
                       "peak_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3)})
    return {"import_and_load_seconds": load_seconds, "by_seq": by_seq,
            "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad)}


def load(size: str, model_dir: Path, work: Path) -> dict:
    """Loading time: quantize a 16-bit checkpoint at load vs a pre-quantized 4-bit one."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    from lib.model import nf4_config

    torch.cuda.synchronize()
    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=nf4_config(torch.bfloat16),
                                                 dtype=torch.bfloat16, device_map={"": 0})
    torch.cuda.synchronize()
    quantize_at_load = time.perf_counter() - started
    prequantized = work / f"{size}-bnb-4bit"
    shutil.rmtree(prequantized, ignore_errors=True)
    model.save_pretrained(prequantized)
    del model
    gc.collect()
    torch.cuda.empty_cache()
    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(prequantized, dtype=torch.bfloat16, device_map={"": 0})
    torch.cuda.synchronize()
    load_prequantized = time.perf_counter() - started
    files = lambda folder: sum(f.stat().st_size for f in folder.glob("*.safetensors")) / 2**30  # noqa: E731
    return {"quantize_at_load_seconds": quantize_at_load, "prequantized_load_seconds": load_prequantized,
            "bf16_checkpoint_gib": files(model_dir), "prequantized_checkpoint_gib": files(prequantized),
            "layers_4bit": sum(type(m).__name__ == "Linear4bit" for m in model.modules())}


def run_job(job: dict, work: Path) -> dict:
    model_dir = work / "models" / job["size"]
    started = time.perf_counter()
    if job["kind"] == "full_ft":
        result = full_ft(job["size"], job["mode"], job["seq"], model_dir)
    elif job["kind"] == "trinity":
        result = trinity(job["size"], job["seqs"], model_dir)
    else:
        result = load(job["size"], model_dir, work)
    return job | {k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()} | {
        "job_seconds": round(time.perf_counter() - started, 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tokenizer_dir", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/claims-gpu"))
    parser.add_argument("--jobs", nargs="*", default=list(JOBS))
    parser.add_argument("--deadline", type=float, default=540, help="seconds; no new job starts after")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print("ROW " + json.dumps(run_job(json.loads(args.one), args.work)), flush=True)
        return 0
    started = time.time()
    results = args.work / "rows.jsonl"
    args.work.mkdir(parents=True, exist_ok=True)
    done = {json.dumps({k: r[k] for k in ("kind", "size", "mode", "seq") if k in r}, sort_keys=True)
            for r in map(json.loads, results.read_text().splitlines())} if results.exists() else set()
    context = cuda_context_gib()
    for name in args.jobs:
        for job in JOBS[name]:
            key = json.dumps({k: job[k] for k in ("kind", "size", "mode", "seq") if k in job}, sort_keys=True)
            if key in done or time.time() - started > args.deadline:
                continue
            random_init_checkpoint(job["size"], args.tokenizer_dir, args.work / "models")
            ran = subprocess.run([sys.executable, "-m", "tools.claims_gpu", str(args.tokenizer_dir), "--out",
                                  str(args.out), "--work", str(args.work), "--one", json.dumps(job)], cwd=ROOT,
                                 capture_output=True, text=True, env=os.environ | {"PYTHONUNBUFFERED": "1"})
            rows = [json.loads(line[4:]) for line in ran.stdout.splitlines() if line.startswith("ROW ")]
            if not rows:
                print(ran.stderr[-3000:], flush=True)
                rows = [job | {"error": (ran.stderr.strip().splitlines() or ["?"])[-1][:300]}]
            with results.open("a") as f:
                f.write(json.dumps(rows[0]) + "\n")
            print(f"{time.time() - started:5.0f} s  {json.dumps({k: v for k, v in rows[0].items() if k != 'step_seconds_all'})}",
                  flush=True)
    rows = [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
    command = "python -m tools.claims_gpu " + " ".join(argv if argv is not None else sys.argv[1:])
    measured = {"provenance": provenance(command) | {"cuda_context_gib": context}, "rows": rows}
    write_json(args.out, measured)
    return 0


if __name__ == "__main__":
    sys.exit(main())
