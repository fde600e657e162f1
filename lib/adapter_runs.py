"""Short adapter training runs that differ in one setting (rank, LoRA vs rsLoRA scaling, DoRA).

Each run trains the course's NF4 base with a peft adapter through `lib.training.train`, in a fresh
Python process, so that its peak memory is its own and no state leaks from one run into the next.
Same data, order, seed and learning rate in every run: the curves differ only by the setting.

    python -m lib.adapter_runs RUN_DIR/spec.json     # what `run_in_fresh_process` calls
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .artifacts import read_json, write_json
from .distributed import gather, is_main_process, launch_command, trainable_digest, world_size
from .lora import ALL_LINEAR_MODULES

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class AdapterRun:
    """One short run. `track_every`: record the DoRA paper's Delta M / Delta D every N steps.

    ReLoRA (`lib.relora`): relora_every > 0 merges the adapter into the base and restarts it every N
    steps, pruning that share (relora_prune) of the optimizer state and re-warming the learning rate
    over relora_warmup steps (0: the plain cosine; with relora_every 0 the schedule is constant after
    warm-up). `total_update_modules`: measure the rank of W_end - W_0 of these projections (use a
    float base, load_in_4bit False: NF4 noise is full rank). `eval_records`: response loss of that
    many test-split records at the end. `save_steps`: a checkpoint every N steps (0: none), and
    `resume`: continue from the run folder's last checkpoint (`lib.training.train`).
    """

    name: str
    rank: int
    use_rslora: bool
    use_dora: bool = False
    alpha: float = 32
    steps: int = 24
    batch_size: int = 2
    max_seq_length: int = 256
    learning_rate: float = 2e-4
    warmup_steps: int = 2
    seed: int = 3407
    track_every: int = 4
    compute_dtype: str = "auto"           # lib.precision's policy, or "bfloat16" / "float32"
    model_name: str = "gemma-3-270m"
    dataset_dir: str = "data/python-stdlib"
    target_modules: tuple[str, ...] = field(default=ALL_LINEAR_MODULES)
    load_in_4bit: bool = True
    relora_every: int = 0
    relora_prune: float = 0.99
    relora_warmup: int = 0
    total_update_modules: tuple[str, ...] = ()
    eval_records: int = 0
    save_steps: int = 0
    resume: bool = False


def _callbacks(track_every: int, changes: list, step_seconds: list):
    """A step timer (forward, backward and optimizer only) and the Delta M / Delta D tracker."""
    import time

    from transformers import TrainerCallback

    from .dora import adapted_weights, layer_changes

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            step_seconds.append(time.perf_counter() - self.started)

    class MagnitudeDirectionTracker(TrainerCallback):
        """Delta M / Delta D of q_proj and v_proj against the weights at step 0, every N steps."""

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.reference = adapted_weights(model)

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if track_every > 0 and state.global_step % track_every == 0:
                changes.extend({"step": state.global_step, **row} for row in layer_changes(model, self.reference))

    return [StepTimer(), MagnitudeDirectionTracker()]


def train_adapter(run: AdapterRun, run_dir: str | Path) -> dict:
    """Train `run` in this process; write and return <run_dir>/result.json (see `summarize`)."""
    import torch
    from peft import get_peft_model

    from .data import prepare_dataset, split_files
    from .precision import default_device, resolve_compute_dtype
    from .dora import update_norms
    from .lora import TrinityConfig
    from .model import load_causal_lm, load_tokenizer, resolve_model
    from .relora import snapshot, total_update_ranks
    from .training import TrainingConfig, current_memory_gib, peak_memory_gib, read_log, train

    run_dir = Path(run_dir)
    device = default_device()
    dtype = resolve_compute_dtype(run.compute_dtype, device)
    torch.manual_seed(run.seed)
    source = resolve_model(run.model_name)
    tokenizer = load_tokenizer(source)
    prepared = prepare_dataset(split_files(ROOT / run.dataset_dir), tokenizer, run.max_seq_length).records
    model = load_causal_lm(source, dtype, load_in_4bit=run.load_in_4bit)
    memory_after_load = current_memory_gib(device)
    trinity = TrinityConfig(rank=run.rank, alpha=run.alpha, use_rslora=run.use_rslora, use_dora=run.use_dora,
                            target_modules=run.target_modules)
    model = get_peft_model(model, trinity.to_peft())
    peft_scaling = next(m.scaling["default"] for m in model.modules() if hasattr(m, "scaling")
                        and isinstance(getattr(m, "scaling"), dict) and "default" in m.scaling)
    changes, seconds = [], []
    callbacks = _callbacks(run.track_every, changes, seconds)
    relora = None
    if run.relora_every:  # after the step timer: a merge's time is its own, not the step's
        from .relora import ReLoRACallback, ReLoRASchedule

        relora = ReLoRACallback(ReLoRASchedule(run.relora_every, run.relora_prune, run.relora_warmup), run.steps,
                                run.learning_rate, run.warmup_steps, tracked=((0, "q_proj"), (0, "down_proj")))
        callbacks.append(relora)
    before = snapshot(model, run.total_update_modules) if run.total_update_modules else None
    config = TrainingConfig(max_steps=run.steps, batch_size=run.batch_size, max_seq_length=run.max_seq_length,
                            learning_rate=run.learning_rate, warmup_steps=run.warmup_steps,
                            lr_scheduler_type="constant" if relora else "constant_with_warmup",
                            save_steps=run.save_steps or 10 * run.steps, sample_every=0, seed=run.seed)
    result = train(model, tokenizer, prepared["train"], config, run_dir, device, dtype, resume=run.resume,
                   extra_callbacks=callbacks)
    peak, peak_kind = peak_memory_gib(device)
    summary = {"run": asdict(run), "device": device, "compute_dtype": str(dtype).removeprefix("torch."),
               "peft_scaling": peft_scaling,
               "trainable_parameters": result.stats["trainable_parameters"]["trainable"],
               "train_seconds": result.stats["train_seconds_this_session"],
               "log": read_log(run_dir), "update_norms": update_norms(model), "magnitude_direction": changes,
               "memory_after_load_gib": round(memory_after_load, 3), "peak_memory_gib": round(peak, 3),
               "peak_memory_measure": peak_kind}
    if relora:
        summary |= {"merges": relora.merges, "learning_rates": relora.learning_rates}
    if before is not None:
        summary["total_update_ranks"] = total_update_ranks(model, before, run.rank)
    if run.eval_records:
        from .evaluation import response_loss

        model.eval()
        with torch.no_grad():
            summary["test_loss"] = response_loss(model, tokenizer, prepared["test"][:run.eval_records])
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


def run_in_fresh_process(run: AdapterRun, run_dir: str | Path, processes: int = 1) -> dict:
    """Train `run` in a new Python process (`python -m lib.adapter_runs`) and return its result;
    with `processes` > 1, in that many data-parallel processes (`lib.distributed`: accelerate, DDP),
    each at `run.batch_size`, so the global batch is processes x batch_size.

    The workers' output goes to <run_dir>/worker.log. Raises RuntimeError naming the run and the
    log's last lines when a worker fails.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    spec = write_json(run_dir / "spec.json", asdict(run))
    (run_dir / "result.json").unlink(missing_ok=True)
    log_path = run_dir / "worker.log"
    with open(log_path, "w", encoding="utf-8") as log:
        code = subprocess.run(launch_command("lib.adapter_runs", [str(spec)], processes), cwd=ROOT, stdout=log,
                              stderr=subprocess.STDOUT).returncode
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
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    spec["target_modules"] = tuple(spec["target_modules"])
    from .environment import quiet_library_logs

    quiet_library_logs()
    train_adapter(AdapterRun(**spec), spec_path.parent)
    return 0


if __name__ == "__main__":
    sys.exit(main())
