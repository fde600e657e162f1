"""Fully sharded data parallel (FSDP2) for QLoRA: each process keeps 1/N of every parameter, the
4-bit base included, and gathers one decoder layer's whole weights just before that layer runs.

Use it when the 4-bit model does not fit one GPU (DDP, `lib.distributed`, keeps a whole copy per
process). On GPUs the launch is accelerate's (`launch_arguments`): transformers' Trainer then
wraps each decoder layer with torch's `fully_shard` (FSDP2) and the whole model once more. That
path has not run here: `lib.training` saves the adapter on rank 0 from the parameters it holds,
which under FSDP2 are shards (the full state must be gathered on every rank first), and no
multi-GPU machine was lent. accelerate offers FSDP on GPUs only (its CPU processes run DDP), so
the CPU check here (`compare_with_one_process`) calls the same `torch.distributed.fsdp.fully_shard`
on the same units itself (`shard`) and trains with a plain loop over gloo: it checks that the
sharded 4-bit base trains what one process trains and that it is really split, not the Trainer
integration.

bitsandbytes packs two NF4 codes per byte into a storage dtype (`bnb_4bit_quant_storage`, uint8
by default). FSDP1 flattens each unit's parameters into one buffer of one dtype, so its guides
(peft "FSDP + QLoRA", bitsandbytes "FSDP-QLoRA") store the codes in the model's float dtype;
FSDP2 shards each parameter on its own; `lib.model.nf4_config(quant_storage=...)` sets the dtype
and the CPU check trains with both. The known silent failure, a "sharded" run that keeps a whole
4-bit base on every process, is what `bytes_per_process` shows.
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
    import torch.distributed as dist
    from peft import get_peft_model

    from .lora import TrinityConfig
    from .model import load_causal_lm, resolve_model

    torch.set_num_threads(job["threads"])
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        ids = torch.tensor(job["windows"])
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
            rows.append({"storage": storage, "processes": world, "losses": losses, "bytes": bytes_per_process(model)})
            del model, optimizer
        if rank == 0:
            Path(job["out"]).write_text(json.dumps(rows))
    finally:
        dist.destroy_process_group()


def compare_with_one_process(model: str, records, tokenizer, processes: int = 2, steps: int = 3,
                             global_batch: int = 4, length: int = 64, rank: int = 8, alpha: float = 32,
                             use_dora: bool = True,
                             storages: tuple[str, ...] = ("uint8", "float32"), learning_rate: float = 1e-3,
                             seed: int = 3407) -> list[dict]:
    """Train the same adapter (rsLoRA at `rank`/`alpha`, DoRA when `use_dora`: the Trinity's)
    on an NF4 base (float32 compute) with AdamW for `steps` on the same `global_batch`
    windows (`windows`, from `records`), once in one process and once FSDP2-sharded over
    `processes` gloo processes, for each 4-bit storage dtype. Rows: storage, processes, losses (the
    global batch's mean per step), largest_relative_difference (from the one-process losses of the
    same storage), bytes per process by kind (`bytes_per_process`).

    `model`: an embedded alias, folder or hub id. Raises ValueError if `global_batch` does not divide
    by `processes`; a failing process raises torch.multiprocessing's ProcessRaisedException."""
    import torch.multiprocessing as mp

    if global_batch % processes:
        raise ValueError(f"global_batch {global_batch} does not divide by processes {processes}")
    threads = max(1, torch.get_num_threads() // processes)
    job = {"model": model, "windows": windows(records, tokenizer, length, global_batch).tolist(), "steps": steps,
           "adapter": {"rank": rank, "alpha": alpha, "use_rslora": True, "use_dora": use_dora},
           "learning_rate": learning_rate, "seed": seed, "threads": threads}
    rows = []
    with tempfile.TemporaryDirectory(prefix="fsdp-") as scratch:
        for world in (1, processes):
            out, init = Path(scratch) / f"{world}.json", f"file://{Path(scratch) / f'rendezvous-{world}'}"
            mp.spawn(_train, args=(world, init, job | {"storages": list(storages), "out": str(out)}), nprocs=world)
            rows += json.loads(out.read_text())
    for row in rows:
        one = next(r["losses"] for r in rows if r["storage"] == row["storage"] and r["processes"] == 1)
        row["largest_relative_difference"] = max(abs(a - b) / abs(b) for a, b in zip(row["losses"], one))
    return sorted(rows, key=lambda row: (storages.index(row["storage"]), row["processes"]))
