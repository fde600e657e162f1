"""Measure peak GPU memory of QLoRA/Trinity training over a grid of settings (chapter 02's data).

    python -m tools.memory_grid TOKENIZER_DIR --out data/measurements/gpu-memory-grid.json --workers 3
    python -m tools.memory_grid TOKENIZER_DIR --out data/measurements/gpu-memory-dtype.json --tags dtype

One training "setup" (size, backend, precision, rank, DoRA, target modules, optimizer, gradient
checkpointing) runs in its own process, on a random-init model of the real Gemma 3 text shapes
(`lib.gemma3.GEMMA3_SHAPES`; memory does not depend on the weight values), loaded through the
course's own `lib.training.load_for_training`. Inside that process every sequence length (and
batch size) of the setup is measured in turn: 2 training steps of random tokens (forward with
labels, backward, optimizer step), peak = torch.cuda.max_memory_allocated / max_memory_reserved
since the last reset. The static parts are measured from the tensors themselves: weights and
adapter bytes (`lib.quantization.stored_bytes`), gradients, optimizer state. Several setups may
run at once (`--workers`): each process's allocator statistics are its own, so peaks stay exact;
step times are not recorded for that reason. Results are appended to a JSON-lines file, so a rerun
skips setups already measured, then gathered with provenance (GPU, driver, versions, date, command).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lib.artifacts import write_json  # noqa: E402

ALL = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ATTENTION = ALL[:4]


def setup(size, backend, rank=64, dora=True, targets=ALL, optimizer="adamw_8bit", checkpointing="default",
          precision="nf4-dq", seqs=(1024, 2048, 4096), batches=(1,), tag="grid", compute_dtype="bfloat16") -> dict:
    return {"size": size, "backend": backend, "rank": rank, "dora": dora, "targets": list(targets),
            "optimizer": optimizer, "checkpointing": checkpointing, "precision": precision,
            "seqs": list(seqs), "batches": list(batches), "tag": tag, "compute_dtype": compute_dtype}


def dtype_grid() -> list[dict]:
    """The compute-dtype check (tag "dtype", data/measurements/gpu-memory-dtype.json): what a GPU
    without bfloat16 runs. peft there computes in float32; unsloth, asked for float16, loads Gemma 3
    in bfloat16 with its float32 fixes (UNSLOTH_FORCE_FLOAT32), the path it takes on a T4."""
    return [setup("4B", "unsloth", 64, True, tag="dtype", compute_dtype="float16"),
            setup("1B", "unsloth", 64, True, tag="dtype", compute_dtype="float16"),
            setup("4B", "peft", 64, True, seqs=(1024, 2048), tag="dtype", compute_dtype="float32"),
            setup("4B", "peft", 64, False, seqs=(1024, 2048), tag="dtype", compute_dtype="float32"),
            setup("1B", "peft", 64, True, seqs=(1024, 2048), tag="dtype", compute_dtype="float32")]


def grid() -> list[dict]:
    """The setups measured for chapter 02 (largest first, so that long processes start early)."""
    setups = []
    for size in ("12B", "4B", "1B", "270M"):
        for backend in ("unsloth", "peft"):
            for rank, dora in ((64, True), (64, False), (16, False)):
                setups.append(setup(size, backend, rank, dora))
    extra = [  # the source's OOM-ladder rungs and other single-setting changes, 12B
        setup("12B", "unsloth", 32, True, seqs=(2048, 4096), tag="rung"),
        setup("12B", "unsloth", 32, False, seqs=(2048, 4096), tag="rung"),
        setup("12B", "unsloth", 32, False, targets=("q_proj", "v_proj"), seqs=(2048, 4096), tag="rung"),
        setup("12B", "unsloth", 64, True, targets=ATTENTION, seqs=(2048, 4096), tag="targets"),
        setup("12B", "unsloth", 64, True, optimizer="adamw_torch", seqs=(2048, 4096), tag="optimizer"),
        setup("12B", "unsloth", 64, True, optimizer="paged_adamw_8bit", seqs=(2048, 4096), tag="optimizer"),
        setup("12B", "unsloth", 64, True, checkpointing="standard", seqs=(2048, 4096), tag="checkpointing"),
        setup("12B", "peft", 16, False, precision="bf16", seqs=(1024, 2048), tag="precision"),
        setup("4B", "unsloth", 64, True, seqs=(2048,), batches=(2, 4), tag="batch"),
        setup("4B", "peft", 64, True, seqs=(2048,), batches=(2,), tag="batch"),
        setup("1B", "unsloth", 64, True, checkpointing="off", seqs=(1024, 2048), tag="checkpointing"),
        setup("1B", "peft", 64, True, checkpointing="off", seqs=(1024, 2048), tag="checkpointing"),
    ]
    return setups[:6] + extra + setups[6:]


SETUP_FIELDS = ("size", "backend", "rank", "dora", "targets", "optimizer", "checkpointing", "precision", "tag")


def setup_key(s: dict) -> str:
    return json.dumps([s[k] for k in SETUP_FIELDS] + [s.get("compute_dtype", "bfloat16")])


# ------------------------------------------------------------------ models

def checkpoint_dir(models: Path, size: str, nf4: bool = False) -> Path:
    """Where `random_init_checkpoint` keeps the checkpoint of `size`: models/<size>[-nf4]."""
    return models / (f"{size}-nf4" if nf4 else size)


def random_init_checkpoint(size: str, tokenizer_dir: Path, models: Path, nf4: bool = False) -> Path:
    """A safetensors checkpoint of a random-init Gemma 3 text model of `size`, made once.

    bf16 by default. nf4=True stores it already quantized, NF4 with double quantization in
    bitsandbytes' serialized form (as the hub's "-bnb-4bit" checkpoints): a 27B is then 17 GB on disk
    instead of 54, and every loader (unsloth, transformers) reads it as the same NF4 weights that
    quantizing on load would give. Folder: `checkpoint_dir`.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from lib.gemma3 import shape_of

    target = checkpoint_dir(models, size, nf4)
    if (target / "config.json").exists():
        return target
    partial = models / f".{target.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(shape_of(size).to_config(), dtype=torch.bfloat16)
    if nf4:
        quantize_linears_nf4(model)
    model.save_pretrained(partial)
    del model
    gc.collect()
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    for item in tokenizer_dir.iterdir():
        if item.name.startswith(("tokenizer", "chat_template", "special_tokens")):
            if item.name.endswith(".gz"):
                import gzip

                (partial / item.name[:-3]).write_bytes(gzip.decompress(item.read_bytes()))
            else:
                shutil.copy(item, partial / item.name)
    partial.rename(target)
    return target


def random_init_checkpoint_apart(size: str, tokenizer_dir: Path, models: Path, nf4: bool = False) -> Path:
    """`random_init_checkpoint` in a child process, so that the calling process never holds a CUDA
    context: a measuring process that caps its allocator (`cap_allocator`) counts every process's
    memory on the device as its own context, and a card of that size would not have the caller's."""
    code = ("import sys; from pathlib import Path; from tools.memory_grid import random_init_checkpoint; "
            "random_init_checkpoint(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), nf4=sys.argv[4] == 'nf4')")
    subprocess.run([sys.executable, "-c", code, size, str(tokenizer_dir), str(models), "nf4" if nf4 else "bf16"],
                   cwd=ROOT, check=True)
    return checkpoint_dir(models, size, nf4)


def quantize_linears_nf4(model) -> int:
    """Replace every nn.Linear of `model` except the output head by a bitsandbytes Linear4bit (NF4,
    double quantization, bf16 compute), in place and one at a time: each bf16 weight is freed once
    its NF4 copy exists, so memory stays near the bf16 model's. Sets the config's
    quantization_config as transformers writes it for a 4-bit model. Returns the number replaced.
    QLoRA's storage format (Dettmers et al. 2023, section 3)."""
    import bitsandbytes as bnb
    import torch
    from transformers import BitsAndBytesConfig

    # (parent, attribute name) only: holding the Linear modules themselves would keep every bf16 weight alive
    targets = [(parent, name) for parent in model.modules() for name, child in parent.named_children()
               if type(child) is torch.nn.Linear and name != "lm_head"]
    for parent, name in targets:
        child = getattr(parent, name)
        layer = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                  compute_dtype=torch.bfloat16, compress_statistics=True, quant_type="nf4",
                                  device="meta")
        layer.weight = bnb.nn.Params4bit(child.weight.data, requires_grad=False, compress_statistics=True,
                                         quant_type="nf4", module=layer).to(child.weight.device)
        if child.bias is not None:
            layer.bias = child.bias
        setattr(parent, name, layer)
        del child
    model.config.quantization_config = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16).to_dict()
    return len(targets)


# ------------------------------------------------------------------ one setup, in this process

def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def measure_setup(s: dict, model_dir: Path) -> list[dict]:
    """Rows of measurements for every (seq, batch) of setup `s`, in this process."""
    if s["backend"] == "unsloth":
        import unsloth  # noqa: F401  (patches transformers; must come first)
    import torch

    from lib.memory import optimizer_state_bytes
    from lib.oom_ladder import make_optimizer
    from lib.quantization import stored_bytes
    from lib.run_spec import RunSpec
    from lib.training import load_for_training

    cuda = torch.cuda.is_available()
    gib = 2**30
    spec = RunSpec.of(str(model_dir), rank=s["rank"], use_dora=s["dora"], target_modules=tuple(s["targets"]),
                      backend=s["backend"], precision=s["precision"], compute_dtype=s.get("compute_dtype", "bfloat16"),
                      gradient_checkpointing=None if s["checkpointing"] == "default" else s["checkpointing"],
                      max_seq_length=max(s["seqs"]))
    started = time.time()
    model, _ = load_for_training(spec)
    load_seconds = time.time() - started
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    adapter = tensor_bytes(trainable)
    static = {"weights_gib": (stored_bytes(model) - adapter) / gib, "adapter_gib": adapter / gib,
              "trainable_parameters": sum(p.numel() for p in trainable),
              "adapter_dtypes": sorted({str(p.dtype) for p in trainable}),
              "embedding_dtype": str(model.get_input_embeddings().weight.dtype),
              "allocated_after_load_gib": torch.cuda.memory_allocated() / gib if cuda else None,
              "load_seconds": round(load_seconds, 1)}
    optimizer = make_optimizer(s["optimizer"], trainable)
    vocab = model.get_input_embeddings().weight.shape[0]
    device = model.get_input_embeddings().weight.device
    rows = []
    for batch in s["batches"]:
        for seq in s["seqs"]:
            row = {**{k: v for k, v in s.items() if k not in ("seqs", "batches")}, "seq": seq, "batch": batch,
                   **static}
            try:
                if cuda:
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                for step in range(2):
                    ids = torch.randint(0, vocab, (batch, seq), device=device)
                    loss = model(input_ids=ids, labels=ids).loss
                    loss.backward()
                    row["gradients_gib"] = tensor_bytes(p.grad for p in trainable if p.grad is not None) / gib
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    del loss, ids
                row["optimizer_gib"] = optimizer_state_bytes(optimizer) / gib
                row["peak_allocated_gib"] = torch.cuda.max_memory_allocated() / gib if cuda else None
                row["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / gib if cuda else None
                row["outcome"] = "ok"
            except torch.OutOfMemoryError as error:
                row["outcome"] = "oom"
                row["error"] = str(error).splitlines()[0][:300]
                optimizer.zero_grad(set_to_none=True)
            rows.append(row)
            print("ROW " + json.dumps(row), flush=True)
            if row["outcome"] == "oom":
                return rows
    return rows


# ------------------------------------------------------------------ driver

def cuda_context_gib() -> float | None:
    """Device memory a process uses beyond what PyTorch reserves (the CUDA context), GiB."""
    import torch

    if not torch.cuda.is_available():
        return None
    torch.zeros(1, device="cuda")
    free, total = torch.cuda.mem_get_info()
    return (total - free - torch.cuda.memory_reserved()) / 2**30


def cap_allocator(gpu: str) -> dict:
    """Cap this process's PyTorch allocator to what GPU `gpu` (`lib.memory.GPU_PROFILES`) leaves it:
    its total memory minus the CUDA context measured here, so that "CUDA out of memory" is raised
    where that card would raise it (torch.cuda.set_per_process_memory_fraction). Returns the
    numbers used (GiB). Raises KeyError for an unknown GPU."""
    import torch

    from lib.memory import gpu_profile

    budget = gpu_profile(gpu).memory_gib
    context = cuda_context_gib()
    total = torch.cuda.get_device_properties(0).total_memory
    cap = budget - context
    torch.cuda.set_per_process_memory_fraction(cap * 2**30 / total)
    return {"capped_to": gpu, "budget_gib": budget, "allocator_cap_gib": round(cap, 3),
            "cuda_context_gib": round(context, 3), "device_total_gib": total / 2**30}


def provenance(command: str) -> dict:
    import torch

    from lib.environment import package_versions

    versions = package_versions()
    gpu = {}
    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True).stdout.strip()
        gpu = {"gpu": properties.name, "total_memory_gib": properties.total_memory / 2**30, "driver": smi,
               "cuda": torch.version.cuda}
    return {"date": date.today().isoformat(), "command": command, "python": platform.python_version(),
            "versions": versions, **gpu}


def _gib(value, otherwise: str) -> str:
    return f"{value:.2f}" if isinstance(value, float) else otherwise


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tokenizer_dir", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/memory-grid"))
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--sizes", nargs="*", help="only these sizes")
    parser.add_argument("--tags", nargs="*", help="only setups with these tags")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, default=540, help="seconds; no new setup starts after")
    args = parser.parse_args(argv)
    if args.worker:
        s = json.loads(args.worker)
        measure_setup(s, args.work / "models" / s["size"])
        return 0
    started = time.time()
    every = grid() + (dtype_grid() if args.tags and "dtype" in args.tags else [])  # a file of its own
    setups = [s for s in every if (not args.sizes or s["size"] in args.sizes)
              and (not args.tags or s["tag"] in args.tags)]
    results = args.work / "rows.jsonl"
    args.work.mkdir(parents=True, exist_ok=True)
    done = {setup_key(json.loads(line)) for line in results.read_text().splitlines()} if results.exists() else set()
    todo = [s for s in setups if setup_key(s) not in done]
    context = cuda_context_gib()
    for size in dict.fromkeys(s["size"] for s in todo):
        random_init_checkpoint(size, args.tokenizer_dir, args.work / "models")
        print(f"model {size} ready at {time.time() - started:.0f} s", flush=True)

    def run(s: dict) -> None:
        if time.time() - started > args.deadline:
            return
        done = subprocess.run([sys.executable, "-m", "tools.memory_grid", str(args.tokenizer_dir), "--out",
                               str(args.out), "--work", str(args.work), "--worker", json.dumps(s)],
                              cwd=ROOT, capture_output=True, text=True, env=os.environ | {"PYTHONUNBUFFERED": "1"})
        rows = [json.loads(l[4:]) for l in done.stdout.splitlines() if l.startswith("ROW ")]
        if done.returncode and not rows:
            rows = [{**s, "outcome": "error", "error": (done.stderr.strip().splitlines() or ["?"])[-1][:300]}]
            print(done.stderr[-3000:], flush=True)
        with results.open("a") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        print(f"{time.time() - started:5.0f} s  {s['size']} {s['backend']} r={s['rank']} dora={s['dora']} "
              f"{s['tag']}: " + ", ".join(f"{r.get('seq')}:{r.get('peak_allocated_gib') or r['outcome']}"
                                          for r in rows), flush=True)

    with ThreadPoolExecutor(args.workers) as pool:
        list(pool.map(run, todo))
    rows = [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
    command = "python -m tools.memory_grid " + " ".join(argv if argv is not None else sys.argv[1:])
    measured = {"provenance": provenance(command) | {"cuda_context_gib": context,
                                                       "workers": args.workers},
                "rows": rows, "pending": [s for s in setups if setup_key(s) not in {setup_key(r) for r in rows}]}
    write_json(args.out, measured)
    print("| size | backend | r | DoRA | targets | optimizer | checkpointing | seq | batch | peak allocated GiB | peak reserved GiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['size']} | {r['backend']} | {r['rank']} | {r['dora']} | {len(r['targets'])} | {r['optimizer']} | "
              f"{r['checkpointing']} | {r.get('seq')} | {r.get('batch')} | {_gib(r.get('peak_allocated_gib'), r['outcome'])} | "
              f"{_gib(r.get('peak_reserved_gib'), '')} |")
    print(f"{len(rows)} rows, {len(measured['pending'])} setups pending -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
