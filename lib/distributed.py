"""Data-parallel training across processes (DDP), launched by accelerate.

    accelerate launch --multi_gpu --num_processes N -m lib.adapter_runs RUN_DIR/spec.json

Each process holds the whole (4-bit) model and trains on its share of every global batch; the
adapter's gradients are averaged across processes after each backward (PyTorch DDP, which
transformers' Trainer sets up through accelerate). On GPUs each process drives one GPU and talks
over NCCL; on a CPU the same command starts N processes that talk over gloo, because the course's
TrainingArguments ask for the CPU (`use_cpu`) there. `--multi_gpu` is accelerate's name for its
torchrun launcher on either; `--cpu` would start a single process.

The global batch is per-process batch x processes x gradient accumulation. Trainer shards each
global batch across processes in order, and with `average_tokens_across_devices` the loss is
divided by the token count of the whole global batch, so N processes at batch b train the same
steps as one process at batch N x b, up to float rounding (`tests/test_distributed.py` measures it).

Only the main process (rank 0) writes the run's files: status, log, samples, adapter, statistics
(`lib.training`); every process writes its own RNG state into each checkpoint (transformers), so a
resumed run continues every process's data order.
"""

from __future__ import annotations

import hashlib
import os
import socket
import sys


def rank() -> int:
    """This process's global rank (torchrun's RANK), 0 outside a distributed launch."""
    return int(os.environ.get("RANK", 0))


def world_size() -> int:
    """Processes in the launch (torchrun's WORLD_SIZE), 1 outside a distributed launch."""
    return int(os.environ.get("WORLD_SIZE", 1))


def is_main_process() -> bool:
    """True on rank 0: the one process that writes a run's files."""
    return rank() == 0


def free_port() -> int:
    """A TCP port free on this machine now, for the processes' rendezvous."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch_command(module: str, arguments: list[str], processes: int = 1, accelerate: bool | None = None,
                   fsdp: bool = False) -> list[str]:
    """The command that runs `python -m module arguments...` in `processes` data-parallel processes:
    through accelerate's launcher (its torchrun path for several processes, on a free port), or,
    for one process, in a plain interpreter unless `accelerate` or `fsdp` is True (the one-process
    launch a user of a single GPU runs). `fsdp` shards the model with FSDP2 instead of DDP
    (`lib.fsdp.launch_arguments`; accelerate runs FSDP on GPUs only). Raises ValueError for fewer
    than 1 process."""
    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    if not (processes > 1 if accelerate is None else accelerate) and not fsdp:
        return [sys.executable, "-m", module, *arguments]
    several = processes > 1
    sharding = []
    if fsdp:
        from .fsdp import launch_arguments

        sharding = launch_arguments()
    return [sys.executable, "-m", "accelerate.commands.launch", *(["--multi_gpu"] if several else []),
            "--num_processes", str(processes), "--num_machines", "1", "--mixed_precision", "no",
            "--dynamo_backend", "no", *(["--main_process_port", str(free_port())] if several else []),
            *sharding, "-m", module, *arguments]


def as_typed(command: list[str]) -> str:
    """A `launch_command` as a user types it in a shell: `accelerate launch ...` for accelerate's
    launcher, `python -m ...` for a plain interpreter (this interpreter's path left out)."""
    import shlex

    if command[:3] == [sys.executable, "-m", "accelerate.commands.launch"]:
        return shlex.join(["accelerate", "launch", *command[3:]])
    return shlex.join(["python", *command[1:]] if command[0] == sys.executable else command)


def gather(value) -> list:
    """`value` from every process, in rank order (torch.distributed.all_gather_object); [value]
    outside a distributed run. Every process must call it."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [value]
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def trainable_digest(model) -> str:
    """SHA-256 of every trainable parameter's name, dtype, shape and bytes, in name order: equal
    digests mean bit-identical adapters (the check that DDP kept every process in step). For an
    FSDP2-sharded model the whole tensors are gathered first (`lib.fsdp.full_trainable_state`),
    so every process must call it."""
    import torch

    from .fsdp import full_trainable_state

    digest = hashlib.sha256()
    for name, tensor in full_trainable_state(model).items():
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
