"""Short adapter training runs that differ in one setting (rank, LoRA vs rsLoRA scaling, DoRA).

Each run trains the course's NF4 base with a peft adapter through `lib.training.train`, in a fresh
Python process, so that its peak memory is its own and no state leaks from one run into the next.
Same data, order, seed and learning rate in every run: the curves differ only by the setting.

    python -m lib.adapter_runs RUN_DIR/spec.json     # a run in its own interpreter, as several processes run

A one-process run is a fork of a server that has imported the training stack once (Python's
multiprocessing "forkserver"), not a new interpreter: the imports cost each fresh interpreter about
8 s, which is most of a smoke-sized run. The server also loads the first run's tokenizer (about
6 s: transformers parses tokenizer.json twice), which each fork takes as its own copy. Each fork is
still a clean process: the server imports modules and loads that tokenizer, nothing else, so no run
sees another's state or the caller's. On a machine with a CUDA GPU every run is a new interpreter:
the stack's imports initialize CUDA in the server, and CUDA cannot be used again in a forked child
(`fork_server_usable`).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
from dataclasses import dataclass, fields
from pathlib import Path

from .artifacts import read_json, write_json
from .distributed import gather, is_main_process, launch_command, trainable_digest, world_size
from .run_spec import SECTIONS, RunSpec

ROOT = Path(__file__).resolve().parent.parent


# A short run: the course's NF4 base loaded plainly (no kbit preparation, no checkpointing: the
# sequences are short), plain LoRA with peft's layers, 24 steps of batch 2 at 256 tokens at a
# constant learning rate after 2 warm-up steps, no sampling. Runs change it with `.replace(...)`.
SHORT_RUN = RunSpec.of(use_dora=False, max_steps=24, batch_size=2, max_seq_length=256, warmup_steps=2,
                       lr_scheduler_type="constant_with_warmup", sample_every=0, save_steps=0, backend="peft",
                       gradient_checkpointing="off", dora_implementation="peft")


@dataclass(frozen=True)
class AdapterRun:
    """One short run: a name, its `spec` (`lib.run_spec.RunSpec`, usually `SHORT_RUN.replace(...)`),
    the data, and what to measure.

    dataset_dir: a folder of train/val/test split files (relative to the repository, or absolute).
    `track_every`: record the DoRA paper's Delta M / Delta D every N steps (0: never). ReLoRA (`lib.relora`):
    relora_every > 0 merges the adapter into the base and restarts it every N steps, pruning that
    share (relora_prune) of the optimizer state and re-warming the learning rate over
    relora_warmup steps (0: the plain cosine; with relora_every 0 the schedule is the spec's).
    `total_update_modules`: measure the rank of W_end - W_0 of these projections (use a float
    base, precision "fp32": NF4 noise is full rank). `eval_records`: response loss of that many
    test-split records at the end. `resume`: continue from the run folder's last checkpoint
    (`lib.training.train`; checkpoints every spec.optimisation.save_steps, 0: at the end only).

    The short runs load the base themselves and support backend "peft", gradient_checkpointing
    "off" and dora_implementation "peft" (as `SHORT_RUN`); `train_adapter` refuses other values.
    """

    name: str
    spec: RunSpec = SHORT_RUN
    dataset_dir: str = "data/python-stdlib"
    track_every: int = 4
    relora_every: int = 0
    relora_prune: float = 0.99
    relora_warmup: int = 0
    total_update_modules: tuple[str, ...] = ()
    eval_records: int = 0
    resume: bool = False

    def to_dict(self) -> dict:
        """Flat and JSON-ready: the name, every spec field by name (`RunSpec` field names are
        unique across its parts) and the run's own fields; `from_dict` reverses it."""
        spec = self.spec.to_dict()
        flat = {"model": spec["model"], **{k: v for part in SECTIONS for k, v in spec[part].items()}}
        own = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("name", "spec")}
        return {"name": self.name, **flat, **own}

    @classmethod
    def from_dict(cls, data: dict) -> "AdapterRun":
        own = {f.name for f in fields(cls)} - {"name", "spec"}
        extras = {k: v for k, v in data.items() if k in own}
        if "total_update_modules" in extras:
            extras["total_update_modules"] = tuple(extras["total_update_modules"])
        spec_fields = {k: v for k, v in data.items() if k not in own and k != "name"}
        return cls(data["name"], RunSpec.of(**spec_fields), **extras)


SUPPORTED = {"backend": "peft", "checkpointing": "off", "dora_implementation": "peft"}


def _callbacks(track_every: int, changes: list, step_seconds: list):
    """A step timer (forward, backward and optimizer only) and the Delta M / Delta D tracker."""
    import time

    from transformers import TrainerCallback

    from .dora import adapted_weights, layer_changes
    from .fsdp import unsharded

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            step_seconds.append(time.perf_counter() - self.started)

    class MagnitudeDirectionTracker(TrainerCallback):
        """Delta M / Delta D of q_proj and v_proj against the weights at step 0, every N steps."""

        # Under FSDP2 the weights are shards between steps: read them whole (every process does).
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            with unsharded(model):
                self.reference = adapted_weights(model)

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step % track_every == 0:
                with unsharded(model):
                    changes.extend({"step": state.global_step, **row} for row in layer_changes(model, self.reference))

    return [StepTimer(), *([MagnitudeDirectionTracker()] if track_every > 0 else [])]


def train_adapter(run: AdapterRun, run_dir: str | Path) -> dict:
    """Train `run` in this process; write and return <run_dir>/result.json (see `summarize`)."""
    import torch
    from peft import get_peft_model

    from .data import prepare_dataset, split_files
    from .dora import update_norms
    from .fsdp import quant_storage_for_launch, unsharded
    from .model import PRELOADED_TOKENIZERS, load_causal_lm, load_tokenizer, resolve_model
    from .precision import default_device
    from .relora import snapshot, total_update_ranks
    from .training import compute_dtype_of, current_memory_gib, peak_memory_gib, read_log, train

    spec, loading = run.spec, run.spec.loading
    unsupported = {k: getattr(loading, k) for k, v in SUPPORTED.items() if getattr(loading, k) != v}
    if unsupported:
        raise ValueError(f"adapter run {run.name!r}: short runs support {SUPPORTED}, not {unsupported}")
    run_dir = Path(run_dir)
    device = default_device()
    dtype = compute_dtype_of(spec, device)
    torch.manual_seed(spec.optimisation.seed)
    source = resolve_model(spec.model)
    preloaded = source.path_or_id in PRELOADED_TOKENIZERS
    tokenizer = load_tokenizer(source)
    prepared = prepare_dataset(split_files(ROOT / run.dataset_dir), tokenizer, spec.optimisation.max_seq_length).records
    model = load_causal_lm(source, dtype, load_in_4bit=loading.load_in_4bit, double_quant=loading.precision == "nf4-dq",
                           quant_storage=quant_storage_for_launch(dtype))
    memory_after_load = current_memory_gib(device)
    model = get_peft_model(model, spec.adapter.to_peft())
    peft_scaling = next(m.scaling["default"] for m in model.modules() if hasattr(m, "scaling")
                        and isinstance(getattr(m, "scaling"), dict) and "default" in m.scaling)
    changes, seconds = [], []
    callbacks = _callbacks(run.track_every, changes, seconds)
    relora = None
    if run.relora_every:  # after the step timer: a merge's time is its own, not the step's
        from .relora import ReLoRACallback, ReLoRASchedule

        o = spec.optimisation
        relora = ReLoRACallback(ReLoRASchedule(run.relora_every, run.relora_prune, run.relora_warmup), o.max_steps,
                                o.learning_rate, o.warmup_steps, tracked=((0, "q_proj"), (0, "down_proj")))
        callbacks.append(relora)
        spec = spec.replace(lr_scheduler_type="constant")  # ReLoRA's callback sets every step's learning rate
    before = snapshot(model, run.total_update_modules) if run.total_update_modules else None
    result = train(model, tokenizer, prepared["train"], spec, run_dir, device, resume=run.resume,
                   extra_callbacks=callbacks)
    peak, peak_kind = peak_memory_gib(device)
    summary = {"run": run.to_dict(), "device": device, "compute_dtype": str(dtype).removeprefix("torch."),
               "peft_scaling": peft_scaling, "tokenizer_preloaded": preloaded,
               "trainable_parameters": result.stats["trainable_parameters"]["trainable"],
               "train_seconds": result.stats["train_seconds_this_session"],
               "log": read_log(run_dir), "magnitude_direction": changes,
               "memory_after_load_gib": round(memory_after_load, 3), "peak_memory_gib": round(peak, 3),
               "peak_memory_measure": peak_kind}
    if relora:
        summary |= {"merges": relora.merges, "learning_rates": relora.learning_rates}
    with unsharded(model):  # whole weights on every process under FSDP2; nothing changes otherwise
        summary["update_norms"] = update_norms(model)
        if before is not None:
            summary["total_update_ranks"] = total_update_ranks(model, before, spec.adapter.rank)
    if run.eval_records:
        from .evaluation import response_loss

        model.eval()
        # response_loss calls the decoder inside the model, below FSDP2's root unit: gather it all first
        test = prepared["test"][:run.eval_records]
        with torch.no_grad(), unsharded(model):
            summary["test_loss"] = response_loss(model, tokenizer, test) | {"records": len(test)}
    summary |= summarize(summary["log"], seconds)
    # Every process's view, so a data-parallel run can show that all processes hold one adapter.
    summary["processes"] = world_size()
    summary["adapter_sha256_by_process"] = gather(trainable_digest(model))
    summary["peak_memory_gib_by_process"] = gather(round(peak, 3))
    summary["threads_by_process"] = gather(torch.get_num_threads())
    if is_main_process():
        write_json(run_dir / "result.json", summary)
    return summary


def summarize(log: list[dict], step_seconds: list[float]) -> dict:
    """Loss at start and end (means over the first and last quarter of steps), whether the loss
    rose or became non-finite (`diverged`), and the median step time in seconds (first step,
    which warms up, left out)."""
    losses = [entry["loss"] for entry in log]
    quarter = max(1, len(losses) // 4)
    start, end = statistics.fmean(losses[:quarter]), statistics.fmean(losses[-quarter:])
    finite = all(math.isfinite(x) for x in losses)
    return {"start_loss": start, "end_loss": end, "loss_drop": start - end,
            "diverged": (not finite) or end > start,
            "step_seconds": step_seconds,
            "median_step_seconds": statistics.median(step_seconds[1:]) if len(step_seconds) > 1 else None}


# What every short run imports: the fork server imports these once (see the module docstring);
# the first quiets the libraries' import notes and loads the tokenizer of the model named in
# WARM_MODEL in the server's environment (`start_server`).
PRELOADED = ["lib.forkserver_warmup", "torch", "transformers", "transformers.data.data_collator", "peft", "trl",
             "datasets", "lib.data", "lib.dora", "lib.relora", "lib.evaluation", "lib.training", "lib.adapter_runs"]
WARM_MODEL = "COURSE_FORKSERVER_MODEL"


def fork_server_usable() -> bool:
    """Whether one-process runs fork from the server: not where torch sees a CUDA GPU
    (`torch.cuda.is_available` asks the driver without initializing CUDA in this process)."""
    import torch

    return not torch.cuda.is_available()


def start_server(model: str) -> None:
    """Start the fork server that one-process runs fork from, if it is not running, warming the
    tokenizer of `model` (an embedded alias, folder or hub id, as in a run spec). It imports and
    loads in its own process while the caller goes on: a chapter calls this first, so that those
    15 s overlap its own setup. It lives as long as the caller; a dead one is started again. Does
    nothing where `fork_server_usable` is False."""
    import multiprocessing.forkserver as forkserver

    if not fork_server_usable():
        return

    forkserver.set_forkserver_preload(PRELOADED)
    before = os.environ.get(WARM_MODEL)
    os.environ[WARM_MODEL] = model  # the server inherits the environment it starts with; set only for that
    try:
        forkserver.ensure_running()
    finally:
        if before is None:
            del os.environ[WARM_MODEL]
        else:
            os.environ[WARM_MODEL] = before


def _start_forked(run: AdapterRun, spec_path: Path, log_path: Path):
    """Start `run` as a fork of the preloading server (started here, for this run's model, unless
    `start_server` or an earlier run started it)."""
    import multiprocessing

    start_server(run.spec.model)
    worker = multiprocessing.get_context("forkserver").Process(target=_forked_main, name=run.name,
                                                               args=(str(spec_path), str(log_path)))
    worker.start()
    return worker


def _forked_main(spec_path: str, log_path: str) -> None:
    """A forked run's body: its output (Python's and the libraries' own) to the log, then `main`."""
    log = os.open(log_path, os.O_WRONLY | os.O_APPEND)
    for stream, fd in ((sys.stdout, 1), (sys.stderr, 2)):
        stream.flush()
        os.dup2(log, fd)
    os.chdir(ROOT)  # as the subprocess path runs it: dataset_dir is relative to the repository
    sys.exit(main([spec_path]))


def run_in_fresh_process(run: AdapterRun, run_dir: str | Path, processes: int = 1,
                         accelerate: bool | None = None, fsdp: bool = False) -> dict:
    """Train `run` in a new process and return its result: for one process, a fork of the preloading
    server (module docstring; a new interpreter on a CUDA machine); with `processes` > 1,
    `python -m lib.adapter_runs` in that many data-parallel processes (`lib.distributed`:
    accelerate, DDP), each at `run.spec.optimisation.batch_size`, so the global batch is
    processes x batch_size.
    `accelerate` True launches even one process through accelerate (`launch_command`); `fsdp`
    shards the model over the processes with FSDP2 instead (GPUs only: `lib.fsdp`).

    The workers' output goes to <run_dir>/worker.log. Raises RuntimeError naming the run and the
    log's last lines when a worker fails. The server (about 0.5 GB of imported libraries) lives as
    long as the caller. As for any multiprocessing start method but fork, a calling script guards
    its top level with `if __name__ == "__main__":` (a notebook needs nothing).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    spec = write_json(run_dir / "spec.json", run.to_dict())
    (run_dir / "result.json").unlink(missing_ok=True)
    log_path = run_dir / "worker.log"
    log_path.write_text("", encoding="utf-8")
    if processes == 1 and not accelerate and not fsdp and fork_server_usable():
        worker = _start_forked(run, spec, log_path)
        worker.join()
        code = worker.exitcode
    else:
        command = launch_command("lib.adapter_runs", [str(spec)], processes, accelerate, fsdp)
        with open(log_path, "a", encoding="utf-8") as log:
            code = subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
    if code != 0:
        tail = "\n".join(log_path.read_text(encoding="utf-8").splitlines()[-15:])
        raise RuntimeError(f"adapter run {run.name!r} failed (exit {code}); {log_path} ends with:\n{tail}")
    return read_json(run_dir / "result.json")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(__doc__)
        return 2
    spec_path = Path(argv[0])
    run = AdapterRun.from_dict(json.loads(spec_path.read_text(encoding="utf-8")))
    from .environment import quiet_library_logs

    quiet_library_logs()
    train_adapter(run, spec_path.parent)
    return 0


if __name__ == "__main__":
    sys.exit(main())
