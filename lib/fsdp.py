"""Fully sharded data parallel (FSDP2) for QLoRA: each process keeps 1/N of every parameter, the
4-bit base included, and gathers one decoder layer's whole weights just before that layer runs.

Use it when the 4-bit model does not fit one GPU (DDP, `lib.distributed`, keeps a whole copy per
process). On GPUs the launch is accelerate's (`launch_arguments`): transformers' Trainer then
wraps each decoder layer with torch's `fully_shard` (FSDP2) and the whole model once more. After
training every process holds shards, so what reads whole tensors gathers them first, on every
process at once (a collective): `full_trainable_state` for the adapter that `lib.training` saves
on rank 0 and for `lib.distributed.trainable_digest`, `unsharded` for analyses that need the
whole base weights. accelerate offers FSDP on GPUs only (its CPU processes run DDP), so the CPU
check here (`compare_with_one_process`) calls the same `torch.distributed.fsdp.fully_shard` on the
same units itself (`shard`) and trains with a plain loop over gloo: it checks that the sharded
4-bit base trains what one process trains, that it is really split, and that the gathered adapter
is the one a single process saves; not the Trainer integration (`tools/launch_gpu_check.py` runs
that on a GPU).

bitsandbytes packs two NF4 codes per byte into a storage dtype (`bnb_4bit_quant_storage`, uint8
by default). FSDP1 flattens each unit's parameters into one buffer of one dtype, so its guides
(peft "FSDP + QLoRA", bitsandbytes "FSDP-QLoRA") store the codes in the model's float dtype;
FSDP2 shards each parameter on its own, and the CPU check trains correctly with both
(`lib.model.nf4_config(quant_storage=...)` sets the dtype), but accelerate's FSDP2 preparation
leaves uint8 codes unsharded: the known silent failure, a "sharded" run that keeps a whole 4-bit
base on every process, which `bytes_per_process` shows. So under an FSDP launch the course loads
with the compute dtype as storage (`quant_storage_for_launch`).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch


def decoder_layers(model) -> list[torch.nn.Module]:
    """The units FSDP shards one at a time: the modules of the classes transformers lists in the
    model's `_no_split_modules` (Gemma 3: Gemma3DecoderLayer), as accelerate's
    TRANSFORMER_BASED_WRAP picks them. Raises ValueError if the model names none."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(base, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ValueError(f"{type(base).__name__} lists no decoder layer class in _no_split_modules ({names})")
    return layers


def shard(model):
    """FSDP2 over the process group already initialized: `fully_shard` on every decoder layer, then
    on the whole model (embeddings, final norm and head). Returns `model`, whose parameters are now
    DTensors holding this process's shard."""
    from torch.distributed.fsdp import fully_shard

    for layer in decoder_layers(model):
        fully_shard(layer)
    return fully_shard(model)


def bytes_per_process(model) -> dict[str, dict[str, int]]:
    """{"4-bit base" | "adapter" | "other": {"this process": bytes, "whole model": bytes}}.
    "4-bit base" is the packed NF4 codes of bitsandbytes' Linear4bit layers (their quantization
    constants, an attribute of each layer and not a parameter, stay whole on every process and are
    not counted), "adapter" the trainable parameters, "other" the rest (embeddings, norms). A
    sharded parameter (a DTensor) counts its local shard for this process."""
    import bitsandbytes as bnb

    packed = {id(m.weight) for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)}
    sizes = {kind: {"this process": 0, "whole model": 0} for kind in ("4-bit base", "adapter", "other")}
    for parameter in model.parameters():
        kind = "4-bit base" if id(parameter) in packed else "adapter" if parameter.requires_grad else "other"
        local = parameter.to_local() if hasattr(parameter, "to_local") else parameter
        sizes[kind]["this process"] += local.numel() * local.element_size()
        sizes[kind]["whole model"] += parameter.numel() * parameter.element_size()
    return sizes


def launched_with_fsdp() -> bool:
    """Whether accelerate's launcher started this process for FSDP (it sets ACCELERATE_USE_FSDP)."""
    import os

    return os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("true", "1")


def quant_storage_for_launch(compute_dtype: torch.dtype) -> torch.dtype:
    """The 4-bit storage dtype to load with in this process: the compute dtype under an FSDP launch,
    bitsandbytes' uint8 otherwise. accelerate 1.15's FSDP2 preparation leaves frozen non-floating
    Params4bit (uint8 codes) out of the sharding "to prevent quant_state corruption", so with the
    default storage every process would keep the whole 4-bit base: the silent no-saving failure."""
    return compute_dtype if launched_with_fsdp() else torch.uint8


def is_sharded(model) -> bool:
    """Whether `model` holds FSDP2 shards (any parameter a DTensor)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def full_trainable_state(model) -> dict[str, torch.Tensor]:
    """{parameter name: whole tensor on the CPU} of the trainable parameters, in name order: each
    FSDP2 shard gathered from every process (`DTensor.full_tensor`), a plain tensor as it is. Every
    process must call it, in step (it is a collective for a sharded model); the keys are those of
    `model.state_dict()`, so peft's `save_pretrained(state_dict=...)` takes it."""
    from torch.distributed.tensor import DTensor

    state = {}
    for name, parameter in sorted(model.named_parameters()):
        if parameter.requires_grad:
            tensor = parameter.full_tensor() if isinstance(parameter, DTensor) else parameter
            state[name] = tensor.detach().cpu().contiguous()
    return state


class unsharded:
    """`with unsharded(model):` every FSDP2 unit of `model` holds its whole parameters (gathered
    from every process) inside the block and its shard again after it; a no-op for a model that is
    not sharded. Every process must enter it together. For reading whole weights after training
    (the adapter's update norms), not for training."""

    def __init__(self, model):
        from torch.distributed.fsdp import FSDPModule

        self.units = [m for m in model.modules() if isinstance(m, FSDPModule)]

    def __enter__(self):
        for unit in self.units:
            unit.unshard()
        return self

    def __exit__(self, *exc):
        for unit in reversed(self.units):
            unit.reshard()
        return False


def launch_arguments() -> list[str]:
    """accelerate launch's flags for FSDP2 over the decoder layers, for a GPU run of
    `lib.adapter_runs` or any Trainer script: sharded checkpoints (rank 0 alone could not hold a
    27B state), weights loaded on rank 0 and broadcast (one CPU copy, not N), layers resharded after
    their forward. Insert them before `-m` in `lib.distributed.launch_command`'s command."""
    return ["--use_fsdp", "--fsdp_version", "2", "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP",
            "--fsdp_state_dict_type", "SHARDED_STATE_DICT", "--fsdp_cpu_ram_efficient_loading", "true",
            "--fsdp_reshard_after_forward", "true"]


# ------------------------------------------------------------------ the CPU check

def windows(records, tokenizer, length: int, count: int) -> torch.Tensor:
    """`count` windows of `length` token ids (count x length, int64): the records' conversations
    under the chat template, concatenated and cut. Raises ValueError if they hold too few tokens."""
    from .data import tokenize_conversation

    stream: list[int] = []
    for record in records:
        stream += tokenize_conversation(tokenizer, record.messages)["input_ids"]
        if len(stream) >= length * count:
            return torch.tensor(stream[:length * count]).view(count, length)
    raise ValueError(f"{len(stream)} tokens in {len(records)} records: fewer than {count} windows of {length}")


def _train(rank: int, world: int, init: str, job: dict) -> None:
    """One process of the check: for each storage dtype load, adapt, shard (several processes) and
    train; rank 0 writes the rows to job["out"]. One process group for all storages: each process
    imports the stack once."""
    from types import SimpleNamespace

    from .environment import quiet_library_logs

    quiet_library_logs()  # a spawned process starts with Python's logger levels, and writes to the caller's stderr
    import torch.distributed as dist
    from peft import get_peft_model

    from .distributed import gather, trainable_digest
    from .dora import update_norms
    from .evaluation import response_loss
    from .lora import TrinityConfig
    from .model import load_causal_lm, load_tokenizer, resolve_model

    torch.set_num_threads(job["threads"])
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        ids = torch.tensor(job["windows"])
        tokenizer = load_tokenizer(resolve_model(job["model"]))
        test_records = [SimpleNamespace(messages=messages) for messages in job["test_messages"]]
        share = len(ids) // world
        mine = ids[rank * share:(rank + 1) * share]  # every window the same length: a mean of means is the mean
        rows = []
        for storage in job["storages"]:
            torch.manual_seed(job["seed"])
            model = load_causal_lm(resolve_model(job["model"]), torch.float32, quant_storage=getattr(torch, storage))
            model = get_peft_model(model, TrinityConfig(**job["adapter"]).to_peft())
            model.train()
            if world > 1:
                shard(model)
            optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=job["learning_rate"])
            losses = []
            for _ in range(job["steps"]):
                loss = model(input_ids=mine, labels=mine).loss
                loss.backward()  # FSDP2 averages the adapter's gradients over the processes
                optimizer.step()
                optimizer.zero_grad()
                mean = loss.detach().clone()
                dist.all_reduce(mean)
                losses.append(mean.item() / world)
            # What lib.training and lib.adapter_runs do after training, on the shards: gather, save, read.
            digests = gather(trainable_digest(model))
            state = full_trainable_state(model)
            model.eval()
            with torch.no_grad(), unsharded(model):  # both read below FSDP2's root unit
                norms = [row["relative_update"] for row in update_norms(model)]
                test_loss = response_loss(model, tokenizer, test_records)["loss"]
            adapter = Path(job["out"]).with_name(f"adapter-{storage}-{world}")
            if rank == 0:
                model.save_pretrained(adapter, state_dict=state)
            rows.append({"storage": storage, "processes": world, "losses": losses, "bytes": bytes_per_process(model),
                         "digests_by_process": digests, "update_norms": norms, "test_loss": test_loss,
                         "adapter": str(adapter)})
            del model, optimizer
        if rank == 0:
            Path(job["out"]).write_text(json.dumps(rows))
    finally:
        dist.destroy_process_group()


def compare_with_one_process(model: str, records, tokenizer, processes: int = 2, steps: int = 3,
                             global_batch: int = 4, length: int = 64, rank: int = 8, alpha: float = 32,
                             use_dora: bool = True, test_records=(),
                             storages: tuple[str, ...] = ("uint8", "float32"), learning_rate: float = 1e-3,
                             seed: int = 3407) -> list[dict]:
    """Train the same adapter (rsLoRA at `rank`/`alpha`, DoRA when `use_dora`: the Trinity's)
    on an NF4 base (float32 compute) with AdamW for `steps` on the same `global_batch`
    windows (`windows`, from `records`), once in one process and once FSDP2-sharded over
    `processes` gloo processes, for each 4-bit storage dtype. Rows: storage, processes, losses (the
    global batch's mean per step), largest_relative_difference (from the one-process losses of the
    same storage), bytes per process by kind (`bytes_per_process`), and what happens after
    training, on the shards: digests_by_process (`lib.distributed.trainable_digest`, one per
    process), update_norms (`lib.dora.update_norms` inside `unsharded`), test_loss
    (`lib.evaluation.response_loss` on `test_records`, default the first two records, inside
    `unsharded`), and adapter_relative_difference (the largest ||a - b|| / ||b|| over the tensors of the adapter
    rank 0 saved from `full_trainable_state`, against the one-process adapter).

    `model`: an embedded alias, folder or hub id. Raises ValueError if `global_batch` does not divide
    by `processes`; a failing process raises torch.multiprocessing's ProcessRaisedException."""
    import torch.multiprocessing as mp

    if global_batch % processes:
        raise ValueError(f"global_batch {global_batch} does not divide by processes {processes}")
    threads = max(1, torch.get_num_threads() // processes)
    job = {"model": model, "windows": windows(records, tokenizer, length, global_batch).tolist(), "steps": steps,
           "adapter": {"rank": rank, "alpha": alpha, "use_rslora": True, "use_dora": use_dora},
           "learning_rate": learning_rate, "seed": seed, "threads": threads,
           "test_messages": [r.messages for r in (test_records or records[:2])]}
    rows = []
    with tempfile.TemporaryDirectory(prefix="fsdp-") as scratch:
        for world in (1, processes):
            out, init = Path(scratch) / f"{world}.json", f"file://{Path(scratch) / f'rendezvous-{world}'}"
            mp.spawn(_train, args=(world, init, job | {"storages": list(storages), "out": str(out)}), nprocs=world)
            rows += json.loads(out.read_text())
        for row in rows:
            one = next(r for r in rows if r["storage"] == row["storage"] and r["processes"] == 1)
            row["largest_relative_difference"] = max(abs(a - b) / abs(b) for a, b in zip(row["losses"], one["losses"]))
            row["adapter_relative_difference"] = adapter_difference(row["adapter"], one["adapter"])
    for row in rows:
        del row["adapter"]  # the folder went with the scratch directory
        row["window_tokens"] = len(job["windows"][0])
    return sorted(rows, key=lambda row: (storages.index(row["storage"]), row["processes"]))


def adapter_difference(folder: str | Path, reference: str | Path) -> float:
    """The largest ||a - b|| / ||b|| over the tensors of two saved peft adapters (folders with
    adapter_model.safetensors); inf if their tensor names or shapes differ."""
    from safetensors.torch import load_file

    a, b = (load_file(Path(f) / "adapter_model.safetensors") for f in (folder, reference))
    if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in a):
        return float("inf")
    return max(float(torch.linalg.norm(a[k] - b[k]) / torch.linalg.norm(b[k]).clamp_min(1e-30)) for k in a)
