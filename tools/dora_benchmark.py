"""Benchmark DoRA on a CUDA GPU: LoRA vs peft's DoRA vs the course's fast DoRA, step time and peak memory.

    python -m tools.dora_benchmark TOKENIZER_DIR --out data/measurements/dora-benchmark.json

The reference table's shapes (gpu-anchor-measurements.md): random-init Gemma 3 1B and 4B at 2048
tokens, 12B and 27B at 4096 (the 27B stored already in NF4, `random_init_checkpoint(nf4=True)`: 17 GB
where bf16 would be 54 GB of the device's disk), QLoRA (NF4, double quant), r=64, alpha=32, rsLoRA, 7 target modules, batch 1,
8-bit AdamW, gradient checkpointing, loaded by the course's `lib.training.load_for_training`.
Each (size, backend, variant) runs in its own process, one after another on one GPU: `--warmup`
steps, then `--steps` timed steps of random tokens (forward with labels, backward, optimizer step),
each timed between CUDA synchronisations; step time is their median, peak is
torch.cuda.max_memory_allocated over all steps. The fast DoRA process (uncapped) also checks its
numerics on the GPU: every DoRA layer run with the fast forward and with peft's on one random bf16 input
(B random, as if trained), relative error of outputs and of the gradients of A, B and m.
`--profile` adds a torch.profiler table of the CUDA kernels of one step; `--stacks DIR` has py-spy
(on the PATH) sample the Python stacks of ten more steps into DIR, one collapsed-stack file per
row. `--cap L4` caps each process's allocator to what that GPU leaves PyTorch
(`tools.memory_grid.cap_allocator`), so a row either fits that card or records its "CUDA out of
memory". Rows are appended to a JSON-lines file as they finish (a rerun skips those measured or
out of memory, and runs again those whose process failed); the JSON output carries provenance.
`first_step_seconds` includes compilation, from whatever compile caches the machine holds:
unsloth removes TORCHINDUCTOR_CACHE_DIR from the environment (inductor's cache is then
/tmp/torchinductor_<user>) and keeps its own artifacts under ~/.cache/unsloth, so only a row
whose graphs no earlier row compiled on that machine starts cold.
"""

from __future__ import annotations

import argparse
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
from tools.memory_grid import (checkpoint_dir, cuda_context_gib, provenance,  # noqa: E402
                               random_init_checkpoint_apart)

SHAPES = (("1B", 2048), ("4B", 2048), ("12B", 4096), ("27B", 4096))
STORED_NF4 = {"27B"}  # checkpoints written already quantized (disk), loaded as the same NF4 weights
VARIANTS = {"LoRA": (False, "peft"), "DoRA (peft)": (True, "peft"), "DoRA (fast)": (True, "fast"),
            "DoRA (fast, eager norms)": (True, "fast"),  # no CUDA graph, so no private memory pool for it
            "DoRA (fast, fused m)": (True, "fast"),  # the magnitudes in torch's fused AdamW (`optimizers`)
            "DoRA (fast, overlapped norms)": (True, "fast")}  # and the norms refreshed beside the forward
FUSED_MAGNITUDES = {"DoRA (fast, fused m)", "DoRA (fast, overlapped norms)"}  # as the course's trainer


def optimizers(model, variant: str) -> list:
    """The step's optimizers: 8-bit AdamW (bitsandbytes) for every trainable parameter, or for
    "DoRA (fast, fused m)" only for A and B, with DoRA's magnitude vectors in torch's fused AdamW
    (`lib.fast_dora.magnitudes_in_fused_adamw`, what the course's trainer does on a GPU)."""
    from lib.fast_dora import magnitudes_in_fused_adamw
    from lib.oom_ladder import make_optimizer

    optimizer = make_optimizer("adamw_8bit", [p for p in model.parameters() if p.requires_grad])
    return [magnitudes_in_fused_adamw(optimizer, model) if variant in FUSED_MAGNITUDES else optimizer]


def overlap_check(model, seq: int) -> dict:
    """One forward's loss with every norm refreshed on the side stream beside it (`NormRefresh`'s
    overlap) and, same weights and tokens, refreshed before it: equal unless the forward read a
    norm before its refresh finished."""
    import torch

    import lib.fast_dora
    from lib.fast_dora import norm_refresh_hook

    refresh = norm_refresh_hook(model)
    vocab = model.get_input_embeddings().weight.shape[0]
    ids = torch.randint(0, vocab, (1, seq), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    losses = {}
    for overlap in (True, False):
        refresh.overlap = overlap
        lib.fast_dora._optimizer_steps += 1  # every norm stale, as after an optimizer step
        with torch.no_grad():
            losses[overlap] = model(input_ids=ids, labels=ids).loss.item()
    refresh.overlap = True
    return {"loss_overlapped": losses[True], "loss_refreshed_first": losses[False],
            "side_stream_used": refresh.block_graphs is not None,
            "relative_difference": abs(losses[True] - losses[False]) / abs(losses[False])}


def gpu_parity(model, tokens: int = 64) -> dict:
    """Worst relative error, fast vs peft DoRA forward, over every DoRA layer of `model` on the GPU."""
    import torch
    from peft.tuners.lora.variants import DoraLinearVariant

    import lib.fast_dora
    from peft.utils.integrations import dequantize_module_weight

    worst = {"output": 0.0, "lora_A": 0.0, "lora_B": 0.0, "lora_magnitude_vector": 0.0}
    layers = [m for m in model.modules() if "default" in getattr(m, "lora_variant", {})]
    generator = torch.Generator(device="cuda").manual_seed(0)
    # the norms as the CUDA graph refreshes them vs peft's formula on the dequantized weight, float32
    saved = [m.lora_B["default"].weight.detach().clone() for m in layers]
    with torch.no_grad():
        for m in layers:
            m.lora_B["default"].weight.normal_(0, 0.02, generator=generator)
    lib.fast_dora.NormRefresh([(m, "default") for m in layers], cuda_graph=True)()
    norm_error = 0.0
    with torch.no_grad():
        for m, b in zip(layers, saved):
            lora_weight = m.lora_B["default"].weight.float() @ m.lora_A["default"].weight.float()
            peft_norm = m.lora_magnitude_vector["default"].get_weight_norm(
                dequantize_module_weight(m.get_base_layer()).float(), lora_weight, m.scaling["default"])
            graph_norm = m.lora_magnitude_vector["default"].weight_norm
            norm_error = max(norm_error, float((graph_norm - peft_norm).norm() / peft_norm.norm()))
            m.lora_B["default"].weight.copy_(b)
    for layer in layers:
        fast = layer.lora_variant["default"]
        saved_b = layer.lora_B["default"].weight.detach().clone()
        with torch.no_grad():
            layer.lora_B["default"].weight.normal_(0, 0.02, generator=generator)
        x = torch.randn(1, tokens, layer.in_features, device="cuda", dtype=torch.bfloat16, generator=generator)
        results = []
        for variant in (fast, DoraLinearVariant()):
            layer.lora_variant["default"] = variant
            out = layer(x)
            grad_out = torch.randn(out.shape, device="cuda", dtype=out.dtype,
                                   generator=torch.Generator(device="cuda").manual_seed(1))
            out.backward(grad_out)
            grads = {k: getattr(layer, k)["default"].weight.grad.detach().clone() for k in worst if k != "output"}
            results.append({"output": out.detach()} | grads)
            layer.zero_grad(set_to_none=True)
        layer.lora_variant["default"] = fast
        with torch.no_grad():
            layer.lora_B["default"].weight.copy_(saved_b)
        for key in worst:
            value, reference = results[0][key].double(), results[1][key].double()
            worst[key] = max(worst[key], float((value - reference).norm() / reference.norm()))
    return {"layers": len(layers), "worst_relative_error": worst, "graph_norm_vs_peft_fp32": norm_error}


def norm_refresh_seconds(model, cuda_graph: bool, repeats: int = 3) -> float:
    """Seconds to recompute every fast DoRA norm once (what each optimizer step costs them), median."""
    import torch

    import lib.fast_dora

    refresh = lib.fast_dora.NormRefresh(lib.fast_dora.fast_dora_layers(model), cuda_graph)
    times = []
    for _ in range(repeats + 1):  # the first one captures the graph
        lib.fast_dora._optimizer_steps += 1  # as after an optimizer step: every cached norm is stale
        torch.cuda.synchronize()
        started = time.perf_counter()
        refresh()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return round(statistics.median(times[1:]), 4)


def profile_step(model, step, rows: int = 15) -> dict[str, list[dict]]:
    """One training step under torch.profiler: {'cuda': kernels by total GPU time, 'cpu': ops by
    self CPU time (where launch and Python overhead show: a step longer than its kernels)}."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step()
    events = prof.key_averages()
    cuda = [{"name": e.key[:90], "calls": e.count, "cuda_ms": round(e.device_time_total / 1e3, 2)}
            for e in sorted(events, key=lambda e: -e.device_time_total)[:rows]]
    cpu = [{"name": e.key[:90], "calls": e.count, "cpu_self_ms": round(e.self_cpu_time_total / 1e3, 2)}
           for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:rows]]
    timeline = prof.events()
    kernels = [(e.time_range.start, e.time_range.end) for e in timeline if e.device_type.name == "CUDA"]
    host = [(e.time_range.start, e.time_range.end, host_path(e)) for e in timeline if e.device_type.name == "CPU"]
    return {"cuda": cuda, "cpu": cpu, "cpu_self_ms_total": round(sum(e.self_cpu_time_total for e in events) / 1e3, 1),
            "cuda_ms_total": round(sum(e.self_device_time_total for e in events) / 1e3, 1),
            "gpu_idle": gpu_idle(kernels, host, rows=rows)}


def host_path(event, depth: int = 3) -> str:
    """A profiler CPU event with its outermost and nearest enclosing ops: "outer > ... > parent > op"."""
    chain = [event.name]
    while event.cpu_parent is not None:
        event = event.cpu_parent
        chain.append(event.name)
    chain = chain[::-1]
    inner = chain[-depth:] if len(chain) <= depth + 1 else [chain[0], "..."] + chain[-depth:]
    return " > ".join(name[:60] for name in inner)


def gpu_idle(kernels: list[tuple], host: list[tuple], min_gap_us: float = 20.0, rows: int = 15) -> dict:
    """Where the GPU waited on the host during a profiled step: the gaps of at least `min_gap_us`
    between kernels (start, end in microseconds, any stream), each charged to the innermost host op
    (start, end, name) running at the gap's middle ("(none)" if none). Returns {"idle_ms": total,
    "gaps": count, "by_host_op": [{"name", "ms", "gaps"}] largest first}. A step whose GPU is busy
    throughout is bound by its kernels; idle time is launch and Python overhead (or a host wait)."""
    import bisect

    gaps, busy_until = [], None
    for start, end in sorted(kernels):
        if busy_until is not None and start - busy_until >= min_gap_us:
            gaps.append((busy_until, start))
        busy_until = end if busy_until is None else max(busy_until, end)
    middles = [(a + b) / 2 for a, b in gaps]
    owner = [None] * len(gaps)  # (duration, name) of the innermost host op around each gap's middle
    for start, end, name in host:
        for i in range(bisect.bisect_left(middles, start), bisect.bisect_right(middles, end)):
            if owner[i] is None or end - start < owner[i][0]:
                owner[i] = (end - start, name)
    charged: dict[str, list] = {}
    for (a, b), who in zip(gaps, owner):
        entry = charged.setdefault(who[1] if who else "(none)", [0.0, 0])
        entry[0] += (b - a) / 1e3
        entry[1] += 1
    ranked = sorted(charged.items(), key=lambda item: -item[1][0])[:rows]
    return {"idle_ms": round(sum(b - a for a, b in gaps) / 1e3, 2), "gaps": len(gaps),
            "by_host_op": [{"name": name, "ms": round(ms, 2), "gaps": n} for name, (ms, n) in ranked]}


def sample_stacks(step, path: Path, steps: int = 10, rate: int = 1000) -> dict:
    """Python stacks of `steps` more training steps, sampled by py-spy (collapsed format, one line per
    stack with its count) into `path`: where a step's CPU time goes when it exceeds its kernels'."""
    import signal

    recorder = subprocess.Popen(["py-spy", "record", "--pid", str(os.getpid()), "--format", "raw", "--rate",
                                 str(rate), "--nonblocking", "--output", str(path)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    time.sleep(2)  # attach
    for _ in range(steps):
        step()
    recorder.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
    output = recorder.communicate(timeout=60)[0].decode(errors="replace")
    return {"file": path.name, "steps": steps, "rate_hz": rate, "py_spy": output.strip().splitlines()[-1:]}


def load_variant(seq: int, backend: str, variant: str, model_dir: Path):
    """(model, step, optimizer_times): `variant` on the checkpoint, and one training step of random
    tokens (forward with labels, backward, optimizer step) that appends its optimizer seconds."""
    import torch

    from lib.run_spec import RunSpec
    from lib.training import load_for_training

    use_dora, implementation = VARIANTS[variant]
    model, _ = load_for_training(RunSpec.of(str(model_dir), rank=64, use_dora=use_dora, backend=backend,
                                            compute_dtype="bfloat16", max_seq_length=seq,
                                            dora_implementation=implementation))
    if variant in ("DoRA (fast, eager norms)", "DoRA (fast, overlapped norms)"):
        from lib.fast_dora import norm_refresh_hook

        if variant == "DoRA (fast, eager norms)":
            norm_refresh_hook(model).cuda_graph = False
        else:
            norm_refresh_hook(model).overlap = True
    model.train()
    steppers = optimizers(model, variant)
    vocab = model.get_input_embeddings().weight.shape[0]
    optimizer_times = []

    def step():
        ids = torch.randint(0, vocab, (1, seq), device="cuda")
        model(input_ids=ids, labels=ids).loss.backward()
        torch.cuda.synchronize()
        started = time.perf_counter()
        for optimizer in steppers:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        optimizer_times.append(time.perf_counter() - started)

    return model, step, optimizer_times


def timed(step) -> float:
    """Seconds of one call of `step`, between CUDA synchronisations."""
    import torch

    torch.cuda.synchronize()
    started = time.perf_counter()
    step()
    torch.cuda.synchronize()
    return time.perf_counter() - started


def paired_ratios(times: dict[str, list[float]], warmup: int) -> dict[str, dict]:
    """Per variant of interleaved steps {variant: seconds of its step 0, 1, ...}: the median step
    time after `warmup` steps, and the median over rounds of its step time / LoRA's in the same
    round (None without LoRA): a slow spell of the machine slows both sides of a round alike."""
    lora = times.get("LoRA")
    result = {}
    for variant, seconds in times.items():
        timed_steps = seconds[warmup:]
        ratios = [mine / theirs for mine, theirs in zip(timed_steps, lora[warmup:])] if lora else []
        result[variant] = {"step_seconds": round(statistics.median(timed_steps), 4),
                           "time_vs_lora_paired": round(statistics.median(ratios), 4) if ratios else None,
                           "time_vs_lora_range": [round(min(ratios), 3), round(max(ratios), 3)] if ratios else None}
    return result


def measure_interleaved(size: str, seq: int, backend: str, variants: list[str], model_dir: Path, steps: int,
                        warmup: int, cap: str | None = None) -> list[dict]:
    """One row per variant, all loaded in this process and stepped in turn (each round's order
    rotated), so that they share every slow or fast spell of the machine (`paired_ratios`). Peak
    memory is the process's, of all the models together: compare memory in separate rows. Raises
    ValueError for a memory `cap` (one cap cannot stand for several models' cards)."""
    if cap:
        raise ValueError(f"interleaved rows share one process's memory: no cap ({cap!r}) can apply to each model")
    if backend == "unsloth":
        import unsloth  # noqa: F401  (patches transformers; must come first)
    import torch

    memory = {"cuda_context_gib": round(cuda_context_gib(), 3)}
    loaded = {variant: load_variant(seq, backend, variant, model_dir) for variant in variants}
    times = {variant: [] for variant in variants}
    for i in range(warmup + steps):
        order = variants[i % len(variants):] + variants[:i % len(variants)]
        for variant in order:
            times[variant].append(timed(loaded[variant][1]))
        # progress on stderr: what a run cut short by its time limit still shows
        print(f"round {i}: " + ", ".join(f"{v} {times[v][-1]:.4f} s" for v in variants), file=sys.stderr, flush=True)
    peak = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    checks = {variant: {"overlap_check": overlap_check(loaded[variant][0], seq)}
              for variant in variants if variant == "DoRA (fast, overlapped norms)"}
    return [{"size": size, "seq": seq, "backend": backend, "variant": variant, "cap": cap, **memory, "rank": 64,
             "batch": 1, "interleaved": variants, "peak_allocated_gib": None, "peak_allocated_gib_all_models": peak,
             "step_seconds_all": [round(t, 4) for t in times[variant]], "warmup_steps": warmup,
             "first_step_seconds": round(times[variant][0], 2),
             "optimizer_step_seconds": round(statistics.median(loaded[variant][2][warmup:]), 4), **stats,
             **checks.get(variant, {})}
            for variant, stats in paired_ratios(times, warmup).items()]


def measure(size: str, seq: int, backend: str, variant: str, model_dir: Path, steps: int, warmup: int,
            profile: bool, cap: str | None = None, stacks_dir: Path | None = None) -> dict:
    """One row: this (size, backend, variant) trained in this process, under `cap`'s memory if given."""
    started = time.perf_counter()
    if backend == "unsloth":
        import unsloth  # noqa: F401  (patches transformers; must come first)
    import torch

    from tools.memory_grid import cap_allocator

    if cap:
        memory = {k: v for k, v in cap_allocator(cap).items() if k != "capped_to"}
    else:
        memory = {"cuda_context_gib": round(cuda_context_gib(), 3)}

    use_dora, implementation = VARIANTS[variant]
    model, step, optimizer_times = load_variant(seq, backend, variant, model_dir)
    load_seconds = time.perf_counter() - started
    trainable = [p for p in model.parameters() if p.requires_grad]
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    row = {"size": size, "seq": seq, "backend": backend, "variant": variant, "cap": cap, **memory, "rank": 64,
           "batch": 1, "trainable_parameters": sum(p.numel() for p in trainable),
           "alloc_conf": os.environ.get("PYTORCH_ALLOC_CONF"),  # unsloth sets expandable_segments:True
           "expandable_segments": any(s.get("is_expandable", False) for s in torch.cuda.memory_snapshot())}
    times = []
    try:
        for i in range(warmup + steps):
            times.append(timed(step))
    except torch.OutOfMemoryError as error:  # the row says how far it got: "needs more than this"
        return row | {"error": f"{type(error).__name__}: {str(error).splitlines()[0]}", "steps_done": len(times),
                      "peak_allocated_gib_before_error": round(torch.cuda.max_memory_allocated() / 2**30, 3),
                      "import_and_load_seconds": round(load_seconds, 1)}
    row |= {"step_seconds": round(statistics.median(times[warmup:]), 4),
            "step_seconds_all": [round(t, 4) for t in times], "warmup_steps": warmup,
            "first_step_seconds": round(times[0], 2),  # with compilation (see the module docstring)
            "import_and_load_seconds": round(load_seconds, 1),
            "peak_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3),
            "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 3)}
    row["optimizer_step_seconds"] = round(statistics.median(optimizer_times[warmup:]), 4)
    if implementation == "fast" and use_dora:
        from lib.fast_dora import dora_blocks, fast_dora_layers, norm_refresh_hook

        row["norm_cuda_graph"] = norm_refresh_hook(model).cuda_graph  # what the steps used
        row["norm_refresh_at"] = "model" if dora_blocks(model, fast_dora_layers(model)) is None else "first block"
        row["norm_refresh_seconds"] = norm_refresh_seconds(model, cuda_graph=True)
        row["norm_refresh_seconds_eager"] = norm_refresh_seconds(model, cuda_graph=False)
    if profile:
        row["profile"] = profile_step(model, step)
    if stacks_dir:
        fast = "-fast" if implementation == "fast" and use_dora else ""
        row["stacks"] = sample_stacks(step, Path(stacks_dir) / f"stacks-{size}-{variant.split()[0].lower()}{fast}.txt")
    if implementation == "fast" and use_dora and not cap:  # peft's reference forward needs more than a capped card
        row["gpu_parity"] = gpu_parity(model)
    return row


def table(rows: list[dict]) -> str:
    """Markdown: one line per row, time and memory also relative to LoRA of the same shape/backend."""
    from lib.fast_dora import compare_with_lora

    lines = ["| shape | seq | backend | variant | memory cap | s/step | x LoRA time | optimizer s | norms s "
             "| peak allocated GiB | - LoRA GiB |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in compare_with_lora(rows):
        if "step_seconds" not in r:
            failed = (f"out of memory after {r['steps_done']} steps, > {r['peak_allocated_gib_before_error']:.2f} GiB"
                      if "peak_allocated_gib_before_error" in r else r.get("error", "?"))
            lines.append(f"| {r['size']} | {r['seq']} | {r['backend']} | {r['variant']} | {r.get('cap') or ''} | "
                         f"{failed} ||||||")
            continue
        ratio = f"{r['time_vs_lora']:.2f}" if r["time_vs_lora"] is not None else ""
        extra = f"{r['gib_over_lora']:+.2f}" if r["gib_over_lora"] is not None else ""
        peak = f"{r['peak_allocated_gib']:.2f}" if r.get("peak_allocated_gib") is not None else "(all models)"
        mode = " (interleaved)" if r.get("interleaved") else ""
        lines.append(f"| {r['size']} | {r['seq']} | {r['backend']} | {r['variant']}{mode} | {r.get('cap') or ''} | "
                     f"{r['step_seconds']:.3f} | "
                     f"{ratio} | {r.get('optimizer_step_seconds', '')} | {r.get('norm_refresh_seconds', '')} | "
                     f"{peak} | {extra} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tokenizer_dir", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/dora-benchmark"))
    parser.add_argument("--sizes", nargs="*", default=[size for size, _ in SHAPES])
    parser.add_argument("--backends", nargs="*", default=["unsloth"])
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS))
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--profile", action="store_true", help="add a kernel table per row")
    parser.add_argument("--deadline", type=float, default=540, help="seconds; no new row starts after")
    parser.add_argument("--cap", help="a GPU of lib.memory.GPU_PROFILES (e.g. L4): cap every row's allocator to it")
    parser.add_argument("--stacks", type=Path, help="a folder: py-spy samples 10 more steps of each row into it")
    parser.add_argument("--interleave", action="store_true",
                        help="all variants of a size in one process, their steps in turn (paired ratios)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.interleave and args.cap:
        parser.error("--interleave measures several models in one process: it takes no --cap")
    if args.one:
        job = json.loads(args.one)
        model_dir = checkpoint_dir(args.work / "models", job["size"], nf4=job["size"] in STORED_NF4)
        if "variants" in job:
            rows = measure_interleaved(**job, model_dir=model_dir, steps=args.steps, warmup=args.warmup)
        else:
            rows = [measure(**job, model_dir=model_dir, steps=args.steps, warmup=args.warmup, profile=args.profile,
                            stacks_dir=args.stacks)]
        for row in rows:
            print("ROW " + json.dumps(row), flush=True)
        return 0
    started = time.time()
    results = args.work / "rows.jsonl"
    args.work.mkdir(parents=True, exist_ok=True)
    key = lambda r: (r["size"], r["backend"], r["variant"], r.get("cap"), bool(r.get("interleaved")))  # noqa: E731
    # A row is done when it measured or ran out of memory (a result); one whose process failed is run again.
    finished = [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
    done = {key(r) for r in finished if "error" not in r or "steps_done" in r}
    # This process never touches CUDA (checkpoints are made apart): each row measures its own context.
    for size, seq in SHAPES:
        for backend in args.backends:
            for variants in [args.variants] if args.interleave else [[v] for v in args.variants]:
                job = {"size": size, "seq": seq, "backend": backend, "cap": args.cap}
                job |= {"variants": variants} if args.interleave else {"variant": variants[0]}
                keys = [key(job | {"variant": v, "interleaved": args.interleave}) for v in variants]
                if size not in args.sizes or set(keys) <= done or time.time() - started > args.deadline:
                    continue
                random_init_checkpoint_apart(size, args.tokenizer_dir, args.work / "models", nf4=size in STORED_NF4)
                ran = subprocess.run([sys.executable, "-m", "tools.dora_benchmark", str(args.tokenizer_dir), "--work",
                                      str(args.work), "--out", str(args.out), "--one", json.dumps(job), "--steps",
                                      str(args.steps), "--warmup", str(args.warmup)]
                                     + (["--profile"] if args.profile else [])
                                     + (["--stacks", str(args.stacks)] if args.stacks else []),
                                     cwd=ROOT, capture_output=True, text=True, env=os.environ | {"PYTHONUNBUFFERED": "1"})
                rows = [json.loads(l[4:]) for l in ran.stdout.splitlines() if l.startswith("ROW ")]
                if not rows:
                    print(ran.stderr[-4000:], flush=True)
                    error = (ran.stderr.strip().splitlines() or ["?"])[-1][:300]
                    rows = [{k: v for k, v in job.items() if k != "variants"} | {
                        "variant": v, "error": error, **({"interleaved": variants} if args.interleave else {})}
                        for v in variants]
                with results.open("a") as f:
                    f.write("".join(json.dumps(row) + "\n" for row in rows))
                for row in rows:
                    print(f"{time.time() - started:5.0f} s  {json.dumps({k: v for k, v in row.items() if k not in ('step_seconds_all', 'profile')})}", flush=True)
    rows = [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
    rows = list({key(r): r for r in rows}.values())  # a row run again replaces its failed try
    command = "python -m tools.dora_benchmark " + " ".join(argv if argv is not None else sys.argv[1:])
    measured = {"provenance": provenance(command), "rows": rows}
    write_json(args.out, measured)
    print(table(rows))
    for r in rows:
        if "profile" in r:
            profile = r["profile"] if isinstance(r["profile"], dict) else {"cuda": r["profile"]}
            print(f"\n{r['size']} {r['backend']} {r['variant']}: one step, CUDA kernels "
                  f"({profile.get('cuda_ms_total', '?')} ms in all) and CPU self time "
                  f"({profile.get('cpu_self_ms_total', '?')} ms in all)")
            for p in profile["cuda"]:
                print(f"  {p['cuda_ms']:9.2f} ms  {p['calls']:6d}  {p['name']}")
            for p in profile.get("cpu", []):
                print(f"  {p['cpu_self_ms']:9.2f} ms CPU  {p['calls']:6d}  {p['name']}")
            if "gpu_idle" in profile:
                idle = profile["gpu_idle"]
                print(f"  GPU idle {idle['idle_ms']} ms in {idle['gaps']} gaps, by the host op running then:")
                for p in idle["by_host_op"]:
                    print(f"  {p['ms']:9.2f} ms idle  {p['gaps']:6d}  {p['name']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
