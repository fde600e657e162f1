"""ReLoRA and dynamic rank-1 merging: a low-rank adapter merged into the base weights every few
steps and started again, so that the sum of the merged updates can reach a rank above r.

ReLoRA (Lialin et al. 2023, "ReLoRA: High-Rank Training Through Low-Rank Updates", arXiv
2307.05695): every `reset_every` steps, W <- W + s B A; A re-initialised (Kaiming uniform, as
peft does), B set to zero (so the model's output does not jump); most of the optimizer state
pruned by magnitude (the paper zeroes 99%); and the learning rate restarted with a short warm-up
on the cosine curve (the paper's "jagged" schedule). Dynamic rank-1 merging is the same loop with
r = 1, a merge every k steps, the optimizer state reset in full and no restarts.

On a 4-bit base, merging means dequantize, add, re-quantize (peft's merge of a bitsandbytes
Linear4bit does exactly that): `merge_and_restart` measures the re-quantization error of each
merge, ||Q(W + dW) - (W + dW)||_F / ||dW||_F. Analyses of the total update W_end - W_0 belong on
a bf16 base: on NF4, quantization noise of full rank is part of W_end - W_0.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from transformers import TrainerCallback

from .lora import base_weight, lora_delta, lora_layers


@dataclass(frozen=True)
class ReLoRASchedule:
    """When and how a ReLoRA run merges and restarts.

    reset_every: steps between merges (>= 1). prune_ratio: share (0..1) of each optimizer moment
    tensor zeroed at a merge, smallest magnitudes first (1.0: a full reset). restart_warmup: steps
    of linear re-warm-up after each merge (0: none, the plain cosine).
    """

    reset_every: int
    prune_ratio: float = 0.99
    restart_warmup: int = 5

    def __post_init__(self):
        if self.reset_every < 1:
            raise ValueError(f"reset_every must be >= 1 step, got {self.reset_every}")
        if not 0.0 <= self.prune_ratio <= 1.0:
            raise ValueError(f"prune_ratio must be in [0, 1], got {self.prune_ratio}")
        if not 0 <= self.restart_warmup < self.reset_every:
            raise ValueError(f"restart_warmup must be >= 0 and below reset_every ({self.reset_every}), "
                             f"got {self.restart_warmup}")


def jagged_cosine(step: int, total_steps: int, schedule: ReLoRASchedule, warmup_steps: int) -> float:
    """The learning-rate multiplier (0..1) at `step` (0-based): linear warm-up over warmup_steps,
    cosine decay to 0 at total_steps, and after every merge a linear re-warm-up over
    schedule.restart_warmup steps back up to the cosine."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    cosine = 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))
    since_reset = step % schedule.reset_every
    if schedule.restart_warmup and step >= schedule.reset_every and since_reset < schedule.restart_warmup:
        return cosine * (since_reset + 1) / (schedule.restart_warmup + 1)
    return cosine


@torch.no_grad()
def merge_and_restart(model, adapter: str = "default") -> dict:
    """Merge every LoRA layer's update into its base weight (re-quantizing a 4-bit base) and
    re-initialise the adapter (A random, B zero). Returns {"layers", "requantization_error_median",
    "requantization_error_max"} (0 for a float base). Raises ValueError for DoRA layers: their
    magnitude vector is not an additive update."""
    errors = []
    for index, kind, layer in lora_layers(model, adapter=adapter):
        if layer.use_dora.get(adapter, False):
            raise ValueError(f"layer {index} {kind}: ReLoRA merges LoRA updates; this layer uses DoRA")
        delta = lora_delta(layer, adapter)
        exact = base_weight(layer) + delta
        layer.merge(adapter_names=[adapter])
        layer.merged_adapters = [a for a in layer.merged_adapters if a != adapter]  # active again, as new
        norm = float(torch.linalg.norm(delta))
        errors.append(float(torch.linalg.norm(base_weight(layer) - exact)) / norm if norm else 0.0)
        layer.reset_lora_parameters(adapter, init_lora_weights=True)
    if not errors:
        raise ValueError("the model has no LoRA layers to merge")
    errors.sort()
    return {"layers": len(errors), "requantization_error_median": errors[len(errors) // 2],
            "requantization_error_max": errors[-1]}


@torch.no_grad()
def prune_optimizer_state(optimizer, parameters, ratio: float) -> int:
    """Zero the `ratio` smallest-magnitude entries of each Adam moment of `parameters`; returns
    how many entries were zeroed. ratio 1.0 zeroes everything (and the step count)."""
    optimizer = getattr(optimizer, "optimizer", optimizer)  # through accelerate's wrapper
    zeroed = 0
    for parameter in parameters:
        state = optimizer.state.get(parameter)
        if not state:
            continue
        for key in ("exp_avg", "exp_avg_sq"):
            moment = state.get(key)
            if moment is None:
                continue
            count = int(moment.numel() * ratio)
            if count >= moment.numel():
                moment.zero_()
            elif count > 0:
                threshold = moment.abs().flatten().kthvalue(count).values
                mask = moment.abs() <= threshold
                moment.masked_fill_(mask, 0)
                count = int(mask.sum())
            zeroed += count
        if ratio >= 1.0 and torch.is_tensor(state.get("step")):  # a full reset restarts bias correction
            state["step"].zero_()
    return zeroed


@torch.no_grad()
def principal_angles(previous: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
    """Principal angles (degrees, ascending) between the column spaces of two [n, k] matrices
    (Björck & Golub 1973): arccos of the singular values of Q1^T Q2."""
    q1, _ = torch.linalg.qr(previous.float())
    q2, _ = torch.linalg.qr(current.float())
    cosines = torch.linalg.svdvals(q1.T @ q2).clamp(-1, 1)
    return torch.rad2deg(torch.arccos(cosines)).sort().values


class ReLoRACallback(TrainerCallback):
    """Runs a ReLoRASchedule inside transformers' Trainer (use lr_scheduler_type="constant": this
    callback sets the learning rate of every step).

    Records, in `self.merges`, one row per merge: step, the re-quantization errors, optimizer
    entries zeroed, the merge's seconds, and for the `tracked` layers ((layer index, module) pairs)
    the smallest principal angle between this update's column space (B) and the previous one's, and
    the effective rank of the accumulated update W_merged - W_start (on a 4-bit base it also holds
    the re-quantization noise, full rank: track on a float base).
    """

    def __init__(self, schedule: ReLoRASchedule, total_steps: int, learning_rate: float, warmup_steps: int,
                 tracked: tuple[tuple[int, str], ...] = ()):
        self.schedule, self.total, self.lr, self.warmup = schedule, total_steps, learning_rate, warmup_steps
        self.tracked, self.previous, self.merges, self.learning_rates = tracked, {}, [], []
        self.start = {}

    def _weights(self, model) -> dict:
        return {key: w for key, w in snapshot(model, sorted({m for _, m in self.tracked})).items() if key in self.tracked}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.start = self._weights(model) if self.tracked else {}

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        lr = self.lr * jagged_cosine(state.global_step, self.total, self.schedule, self.warmup)
        for group in getattr(optimizer, "param_groups", []):
            group["lr"] = lr
        self.learning_rates.append((state.global_step + 1, lr))

    def _directions(self, model) -> dict:
        found = {}
        for index, kind, layer in lora_layers(model):
            key = (index, kind)
            if key in self.tracked:
                found[key] = layer.lora_B["default"].weight.detach().float().clone()
        return found

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        step = state.global_step
        if step % self.schedule.reset_every or step >= self.total:
            return
        directions = self._directions(model)
        angles = {f"{l}.{m}": float(principal_angles(self.previous[(l, m)], b)[0])
                  for (l, m), b in directions.items() if (l, m) in self.previous}
        self.previous = directions
        trainable = [p for p in model.parameters() if p.requires_grad]
        started = time.perf_counter()
        row = {"step": step, **merge_and_restart(model),
               "optimizer_entries_zeroed": prune_optimizer_state(optimizer, trainable, self.schedule.prune_ratio)}
        row["merge_seconds"] = time.perf_counter() - started
        if angles:
            row["smallest_angle_to_previous_deg"] = angles
        if self.start:
            from .adapter_spectra import effective_rank

            row["accumulated_effective_rank"] = {f"{l}.{m}": effective_rank(torch.linalg.svdvals(w - self.start[(l, m)]))
                                                 for (l, m), w in self._weights(model).items()}
        self.merges.append(row)


@torch.no_grad()
def snapshot(model, modules=("q_proj", "down_proj")) -> dict[tuple[int, str], torch.Tensor]:
    """{(layer, module): the current effective weight W + s B A, float32 copy}: take it before
    training to measure the total update later."""
    return {(index, kind): base_weight(layer) + lora_delta(layer) for index, kind, layer in lora_layers(model, modules)}


@torch.no_grad()
def total_update_ranks(model, before: dict[tuple[int, str], torch.Tensor], rank: int) -> list[dict]:
    """Per snapshotted layer: the rank of W_now - W_before by three measures (effective rank, stable
    rank, and the count of singular values above 1% of the largest), next to the adapter rank r."""
    from .adapter_spectra import effective_rank, stable_rank

    now = snapshot(model, modules=sorted({m for _, m in before}))
    rows = []
    for key, start in before.items():
        sigma = torch.linalg.svdvals(now[key] - start)
        rows.append({"layer": key[0], "module": key[1], "adapter_rank": rank,
                     "effective_rank": effective_rank(sigma), "stable_rank": stable_rank(sigma),
                     "rank_above_1pct": int((sigma > 0.01 * sigma[0]).sum()) if sigma[0] > 0 else 0})
    return rows
