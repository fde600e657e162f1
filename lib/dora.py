"""DoRA: weight-decomposed low-rank adaptation (Liu et al. 2024, arXiv:2402.09353), taken apart.

DoRA writes a weight W (out x in) as a magnitude times a direction, m * W / ||W||, with the norm
taken per output channel (each row of W: peft's `lora_magnitude_vector`, shape (out,)). It learns
m directly and the direction through LoRA:

    W' = m / ||W + s B A||_row * (W + s B A),    m initialised to ||W||_row, B to zero,

so at initialisation W' = W. The paper's analysis (section 3, Figure 2) compares how far training
moves each layer's magnitude (Delta M) and direction (Delta D) away from the base weight:

    Delta M = mean_i | ||W'_i|| - ||W_i|| |,    Delta D = mean_i (1 - cos(W'_i, W_i))

over output channels i. Full fine-tuning and DoRA show a negative correlation between the two
across layers and steps; LoRA a positive one.
"""

from __future__ import annotations

import torch

from .lora import ALL_LINEAR_MODULES, base_weight, lora_delta, lora_layers


def magnitude_and_direction(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(m, V) with W = m[:, None] * V: m = per-output-channel L2 norm (out,), V rows of unit norm."""
    weight = weight.float()
    magnitude = torch.linalg.norm(weight, dim=1)
    return magnitude, weight / magnitude[:, None]


def adapted_weight(lora_layer, adapter: str = "default") -> torch.Tensor:
    """The effective weight W' of a peft LoRA or DoRA layer, float32 (out x in).

    LoRA: W + s B A. DoRA: m / ||W + s B A||_row * (W + s B A), as peft merges it.
    """
    combined = base_weight(lora_layer) + lora_delta(lora_layer, adapter)
    if not lora_layer.use_dora.get(adapter, False):
        return combined
    magnitude = lora_layer.lora_magnitude_vector[adapter].weight.float()
    return magnitude[:, None] / torch.linalg.norm(combined, dim=1, keepdim=True) * combined


def magnitude_direction_change(base: torch.Tensor, adapted: torch.Tensor) -> tuple[float, float]:
    """(Delta M, Delta D) of the DoRA paper between a base weight and an adapted one (out x in)."""
    m0, v0 = magnitude_and_direction(base)
    m1, v1 = magnitude_and_direction(adapted)
    delta_m = (m1 - m0).abs().mean()
    delta_d = (1 - (v0 * v1).sum(dim=1)).mean()
    return float(delta_m), float(delta_d)


def adapted_weights(model, modules=("q_proj", "v_proj")) -> dict[tuple[int, str], torch.Tensor]:
    """{(layer, module): effective weight W'} of the named projections, float32 copies."""
    with torch.no_grad():
        return {(layer, kind): adapted_weight(module) for layer, kind, module in lora_layers(model, modules)}


def update_norms(model, adapter: str = "default") -> list[dict]:
    """||W' - W||_F / ||W||_F for every adapted projection: how far training moved each weight.

    W' is the effective weight (`adapted_weight`: LoRA or DoRA). One row per layer and module.
    """
    rows = []
    with torch.no_grad():
        for layer, kind, module in lora_layers(model, ALL_LINEAR_MODULES, adapter):
            weight = base_weight(module)
            change = torch.linalg.norm(adapted_weight(module, adapter) - weight) / torch.linalg.norm(weight)
            rows.append({"layer": layer, "module": kind, "relative_update": float(change)})
    return rows


def layer_changes(model, reference: dict[tuple[int, str], torch.Tensor]) -> list[dict]:
    """Delta M and Delta D of each layer in `reference` (from `adapted_weights` at step 0), now.

    Measured against the effective weights at step 0 rather than W itself: equal for LoRA, and
    for DoRA equal up to the rounding of peft's initial magnitude (computed in the base dtype).
    """
    current = adapted_weights(model, modules=sorted({kind for _, kind in reference}))
    rows = []
    for (layer, kind), start in reference.items():
        delta_m, delta_d = magnitude_direction_change(start, current[(layer, kind)])
        rows.append({"layer": layer, "module": kind, "delta_magnitude": delta_m, "delta_direction": delta_d})
    return rows


def dora_output_by_hand(lora_layer, x: torch.Tensor, adapter: str = "default") -> torch.Tensor:
    """y = m / ||W + s B A||_row * (W x + s B A x), computed from the layer's tensors (no peft call).

    x: (..., in) float32; returns (..., out) float32. Compare with the layer's own forward.
    """
    weight = base_weight(lora_layer)
    a, b = lora_layer.lora_A[adapter].weight.float(), lora_layer.lora_B[adapter].weight.float()
    scaling = lora_layer.scaling[adapter]
    norm = torch.linalg.norm(weight + scaling * b @ a, dim=1)
    magnitude = lora_layer.lora_magnitude_vector[adapter].weight.float()
    return (magnitude / norm) * (x @ weight.T + scaling * (x @ a.T) @ b.T)


def correlation_by_step(rows: list[dict]) -> dict[int, float]:
    """{step: Pearson correlation of Delta D and Delta M across layers at that step}.

    Within one step, as in the DoRA paper's reading of its Figure 2: pooled over steps, both grow
    with training time and correlate positively whatever the method. Steps where either quantity
    is constant (no update yet) are left out.
    """
    import numpy as np

    by_step: dict[int, list[dict]] = {}
    for row in rows:
        by_step.setdefault(row["step"], []).append(row)
    result = {}
    for step, group in sorted(by_step.items()):
        d = np.array([r["delta_direction"] for r in group])
        m = np.array([r["delta_magnitude"] for r in group])
        if len(group) > 2 and d.std() > 0 and m.std() > 0:
            result[step] = float(np.corrcoef(d, m)[0, 1])
    return result
