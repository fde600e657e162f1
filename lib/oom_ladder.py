"""Training under a memory budget: the OOM ladder, driven by the estimator, with real recovery.

The source documents give a fixed protocol for "CUDA out of memory": shorten the sequence
(4096 -> 2048), halve the rank (64 -> 32), turn DoRA off, adapt only q_proj and v_proj. This
module runs that protocol, then further rungs the source lacks (batch 1 with gradient
accumulation keeping the effective batch, the paged 8-bit optimizer, shorter sequences). Rungs
are cumulative: each applies on top of the previous ones, and rungs that change nothing are skipped.

`run_ladder` asks `lib.memory.estimate` first and starts at the first rung predicted to fit;
if a real out-of-memory error still happens, it frees what the failed attempt held (traceback
frames cleared, garbage collected, CUDA cache emptied), measures what is left, and steps down.

    python -m lib.oom_ladder 12B T4                 # will it fit? the ladder with predictions
    python -m lib.oom_ladder 4B T4 --backend peft --seq 4096 --batch 4
"""

from __future__ import annotations

import argparse
import gc
import sys
import traceback
import weakref
from dataclasses import dataclass, field
from typing import Callable

from .memory import GPUProfile, MemoryEstimate, estimate, gpu_profile, gpu_run
from .run_spec import OPTIMIZERS, RunSpec


@dataclass(frozen=True)
class Rung:
    """One step down: a name and the change it makes to a run spec."""

    name: str
    change: Callable[[RunSpec], RunSpec]
    from_source: bool = False


RUNGS = [
    Rung("seq -> 2048", lambda s: s.replace(max_seq_length=min(s.optimisation.max_seq_length, 2048)), True),
    Rung("rank -> 32", lambda s: s.replace(rank=min(s.adapter.rank, 32)), True),
    Rung("DoRA off", lambda s: s.replace(use_dora=False), True),
    Rung("targets q_proj, v_proj", lambda s: s.replace(target_modules=("q_proj", "v_proj")), True),
    Rung("batch 1 + gradient accumulation",
         lambda s: s.replace(batch_size=1, gradient_accumulation_steps=s.optimisation.batch_size
                             * s.optimisation.gradient_accumulation_steps)),
    Rung("paged 8-bit AdamW", lambda s: s.replace(optim="paged_adamw_8bit")),
    Rung("seq -> 1024", lambda s: s.replace(max_seq_length=min(s.optimisation.max_seq_length, 1024))),
    Rung("seq -> 512", lambda s: s.replace(max_seq_length=min(s.optimisation.max_seq_length, 512))),
]


def ladder(spec: RunSpec, rungs=RUNGS) -> list[tuple[str, RunSpec]]:
    """[(rung name, spec)]: the spec as asked, then each rung applied cumulatively (no-op rungs dropped)."""
    steps = [("as asked", spec)]
    for rung in rungs:
        changed = rung.change(steps[-1][1])
        if changed != steps[-1][1]:
            steps.append((rung.name, changed))
    return steps


@dataclass
class Attempt:
    """What happened at one rung. Memory in GiB; `left_after_gib`: allocated after recovery minus before."""

    rung: str
    spec: RunSpec
    predicted: MemoryEstimate
    outcome: str  # "skipped" (predicted not to fit), "oom", "ok"
    measured_peak_gib: float | None = None
    left_after_gib: float | None = None
    error: str = ""

    def as_row(self) -> dict:
        return {"rung": self.rung, "setup": self.spec.describe(), "settings": self.spec.short(),
                "predicted_peak_gib": round(
                self.predicted.peak_allocated, 2), "predicted_total_gib": round(self.predicted.total, 2),
                "outcome": self.outcome, "measured_peak_gib": self.measured_peak_gib,
                "left_after_gib": self.left_after_gib, "error": self.error}


@dataclass
class LadderResult:
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def chosen(self) -> Attempt | None:
        """The attempt that trained, or None if every rung failed."""
        return next((a for a in self.attempts if a.outcome == "ok"), None)

    def rows(self) -> list[dict]:
        return [a.as_row() for a in self.attempts]


def is_out_of_memory(error: BaseException) -> bool:
    """True for PyTorch's OutOfMemoryError and the allocation failures CUDA libraries raise as RuntimeError."""
    import torch

    text = str(error)
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in text.lower() or \
        "CUBLAS_STATUS_ALLOC_FAILED" in text


def allocated_gib() -> float:
    """Memory PyTorch's CUDA allocator holds now (0 without a GPU)."""
    import torch

    return torch.cuda.memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0


def release(error: BaseException) -> None:
    """Free what a failed attempt held: the traceback's frames keep its model and tensors alive."""
    import torch

    traceback.clear_frames(error.__traceback__)
    error.__traceback__ = None
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_ladder(spec: RunSpec, budget_gib: float, attempt: Callable[[RunSpec], float],
               start: str = "predicted", estimator: Callable[[RunSpec], MemoryEstimate] = estimate,
               log: Callable[[str], None] = print) -> LadderResult:
    """Try `attempt(spec)` rung by rung, from `spec` down, until one trains; returns every attempt.

    budget_gib: device memory available (a GPU's total, or a cap). start="predicted" skips rungs
    whose estimate (`MemoryEstimate.total`) exceeds the budget; start="top" tries every rung from
    the first, as the source's protocol does. `attempt` trains and returns the measured peak (GiB,
    or None where nothing measures it);
    it may raise an out-of-memory error, which is caught, freed (`release`) and recorded; any other
    error propagates. Raises ValueError for an unknown `start`.
    """
    if start not in ("predicted", "top"):
        raise ValueError(f"start={start!r}: use 'predicted' or 'top'")
    result = LadderResult()
    for name, candidate in ladder(spec):
        predicted = estimator(candidate)
        if start == "predicted" and predicted.total > budget_gib:
            result.attempts.append(Attempt(name, candidate, predicted, "skipped"))
            log(f"skip  {name:32s} predicted {predicted.total:6.2f} GiB > budget {budget_gib:.2f}")
            continue
        before = allocated_gib()
        try:
            peak = attempt(candidate)
        except Exception as error:  # noqa: BLE001  (only out-of-memory errors are handled)
            if not is_out_of_memory(error):
                raise
            message = str(error).splitlines()[0][:200]
            release(error)
            del error
            left = allocated_gib() - before
            result.attempts.append(Attempt(name, candidate, predicted, "oom", None, round(left, 3), message))
            log(f"OOM   {name:32s} predicted {predicted.total:6.2f} GiB; left allocated after recovery {left:.3f} GiB")
            continue
        result.attempts.append(Attempt(name, candidate, predicted, "ok", None if peak is None else round(peak, 3)))
        measured = "not measured (no GPU)" if peak is None else f"{peak:.2f} GiB (allocated)"
        log(f"ok    {name:32s} predicted {predicted.total:6.2f} GiB, measured peak {measured}")
        return result
    return result


# ------------------------------------------------------------------ a real attempt

def probe_attempt(model_path: str, steps: int = 3) -> Callable[[RunSpec], float]:
    """An `attempt` for `run_ladder`: load the model at `model_path` with the spec, train `steps`
    optimizer steps on random full-length sequences (the worst case for that max_seq_length),
    return the peak allocated GiB (None without a GPU).

    Uses `lib.training.load_for_training` (the course's loader) and a plain loop with gradient
    accumulation, so that what is measured is the step itself.
    """

    def attempt(spec: RunSpec) -> float | None:
        import torch

        from .training import load_for_training

        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        model, _ = load_for_training(spec.replace(model=model_path))
        model.train()
        o = spec.optimisation
        optimizer = make_optimizer(o.optimizer_for("cuda" if cuda else "cpu"),
                                   [p for p in model.parameters() if p.requires_grad])
        vocab = model.get_input_embeddings().weight.shape[0]
        for _ in range(steps):
            for _ in range(o.gradient_accumulation_steps):
                ids = torch.randint(0, vocab, (o.batch_size, o.max_seq_length), device=model.device)
                (model(input_ids=ids, labels=ids).loss / o.gradient_accumulation_steps).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
        del model, optimizer
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
        return peak

    return attempt


class SimulatedGPU:
    """A GPU that runs out of memory on cue, for showing the ladder where there is no GPU.

    While the context is open, a forward hook on every module raises `torch.OutOfMemoryError` from
    inside the model's forward pass (so its traceback holds the model and activations, as a real
    one does) whenever `fits(spec)` is False for the spec being attempted. Each attempted model
    is remembered by a weak reference, so the caller can check that recovery freed it, and every
    torch optimizer step taken meanwhile is counted (`optimizer_steps`: a refused attempt takes none).

        probe = probe_attempt(path, steps=2)
        with SimulatedGPU(probe, fits=lambda s: estimate(s).peak_allocated <= 1.5, label="1.5 GiB") as gpu:
            result = run_ladder(spec, 100.0, gpu.attempt, start="top")
        assert gpu.models_alive() == 0
    """

    def __init__(self, attempt: Callable[[RunSpec], float | None], fits: Callable[[RunSpec], bool],
                 label: str = "simulated"):
        self._attempt, self.fits, self.label = attempt, fits, label
        self.current: RunSpec | None = None
        self.models_seen: list[weakref.ref] = []
        self.optimizer_steps = 0

    def attempt(self, spec: RunSpec) -> float | None:
        """The `attempt` to give `run_ladder`: the wrapped attempt, under this GPU's budget."""
        self.current = spec
        return self._attempt(spec)

    def _hook(self, module, args, output) -> None:
        if type(module).__name__.endswith("ForCausalLM"):
            self.models_seen.append(weakref.ref(module))
            if not self.fits(self.current):
                import torch

                raise torch.OutOfMemoryError(f"CUDA out of memory ({self.label} GPU, simulated)")

    def models_alive(self) -> int:
        """How many of the attempted models are still in memory (after a garbage collection)."""
        gc.collect()
        return sum(ref() is not None for ref in self.models_seen)

    def __enter__(self) -> "SimulatedGPU":
        import torch

        from torch.optim.optimizer import register_optimizer_step_post_hook

        self._handle = torch.nn.modules.module.register_module_forward_hook(self._hook)
        self._steps_handle = register_optimizer_step_post_hook(self._count_step)
        return self

    def _count_step(self, optimizer, args, kwargs) -> None:
        self.optimizer_steps += 1

    def __exit__(self, *exc) -> None:
        self._handle.remove()
        self._steps_handle.remove()


def make_optimizer(name: str, params):
    """torch AdamW ("adamw_torch") or bitsandbytes' AdamW8bit / PagedAdamW8bit, lr 1e-4."""
    import torch

    if name == "adamw_torch":
        return torch.optim.AdamW(params, lr=1e-4)
    import bitsandbytes as bnb

    return {"adamw_8bit": bnb.optim.AdamW8bit, "paged_adamw_8bit": bnb.optim.PagedAdamW8bit}[name](params, lr=1e-4)


# ------------------------------------------------------------------ will it fit?

def spec_for(model: str, gpu: GPUProfile, **settings) -> RunSpec:
    """`lib.memory.gpu_run(model, **settings)` on `gpu`: activations in the dtype the backend runs
    in there (`lib.precision.gpu_precision`), unless `compute_dtype` is given."""
    from .precision import gpu_precision

    if "compute_dtype" not in settings:
        settings["compute_dtype"] = gpu_precision(settings.get("backend", "unsloth"), gpu.bf16).activations
    return gpu_run(model, **settings)


def recommend(model: str, gpu: str | GPUProfile, **settings) -> tuple[str, RunSpec, MemoryEstimate] | None:
    """(rung, spec, estimate) of the first ladder rung predicted to fit `gpu`, or None if none does.

    settings: any RunSpec field (backend, rank, use_dora, max_seq_length, batch_size, optim, ...);
    the default is the Trinity at 4096 tokens under unsloth. The activations' dtype follows the
    GPU and backend (`lib.precision.gpu_precision`: float32 for peft on a T4) unless given.
    """
    gpu = gpu_profile(gpu) if isinstance(gpu, str) else gpu
    for name, spec in ladder(spec_for(model, gpu, **settings)):
        predicted = estimate(spec)
        if predicted.total <= gpu.memory_gib:
            return name, spec, predicted
    return None


def ladder_rows(model: str, gpu: str | GPUProfile, **settings) -> list[dict]:
    """Every rung with its estimate and whether it fits `gpu`: the "will it fit?" table."""
    gpu = gpu_profile(gpu) if isinstance(gpu, str) else gpu
    rows = []
    for name, spec in ladder(spec_for(model, gpu, **settings)):
        predicted = estimate(spec)
        rows.append({"rung": name, "setup": spec.describe(), "settings": spec.short(), **predicted.as_row(),
                     "fits": predicted.total <= gpu.memory_gib})
    return rows


def bounded(low: int, high: int):
    """An argparse type: a whole number in [low, high], else a usage error naming the range."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is outside {low}-{high}")
        return value

    return parse


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Will it fit? Predicted memory of the OOM ladder on a GPU.")
    parser.add_argument("model", help="270M, 1B, 4B, 12B or 27B")
    parser.add_argument("gpu", help="T4, L4, A10G, A100-40GB, A100-80GB, H100-80GB")
    parser.add_argument("--backend", default="unsloth", choices=("unsloth", "peft"))
    parser.add_argument("--seq", type=bounded(1, 131_072), default=4096, help="max_seq_length (1-131072)")
    parser.add_argument("--batch", type=bounded(1, 1024), default=1, help="per-device batch size (1-1024)")
    parser.add_argument("--rank", type=bounded(1, 4096), default=64, help="LoRA rank (1-4096)")
    parser.add_argument("--no-dora", action="store_true")
    parser.add_argument("--optimizer", default=None, choices=OPTIMIZERS,
                        help="default: the run spec's, 8-bit AdamW on a GPU")
    args = parser.parse_args(argv)
    from rich.console import Console
    from rich.table import Table

    try:
        gpu = gpu_profile(args.gpu)
        rows = ladder_rows(args.model, gpu, backend=args.backend, max_seq_length=args.seq, batch_size=args.batch,
                           rank=args.rank, use_dora=not args.no_dora, optim=args.optimizer)
    except (KeyError, ValueError) as error:
        print(f"error: {error.args[0]}", file=sys.stderr)
        return 2
    table = Table(title=f"Gemma 3 {args.model} on {gpu.name} ({gpu.memory_gib:.2f} GiB usable)")
    for column in ("rung", "settings", "weights", "adapter+grads+optim", "activations+logits", "total GiB", "fits"):
        table.add_column(column, justify="left" if column in ("rung", "settings") else "right")
    first = next((r["rung"] for r in rows if r["fits"]), None)
    for r in rows:
        style = "bold green" if r["rung"] == first else None
        table.add_row(r["rung"], r["settings"], f"{r['weights']:.2f}",
                      f"{r['adapter'] + r['gradients'] + r['optimizer']:.2f}",
                      f"{r['activations'] + r['logits']:.2f}", f"{r['total']:.2f}", "yes" if r["fits"] else "no",
                      style=style)
    console = Console()
    console.print(table)
    console.print(f"recommended: {first}" if first else "no rung fits: choose a smaller model or a larger GPU")
    return 0 if first else 1


if __name__ == "__main__":
    sys.exit(main())
