"""Where a fine-tune changed the model: per layer and module, how large the learned update is and
how much of its rank it uses.

For a LoRA layer the learned update is Delta W = s B A (out x in, rank <= r). Its singular values
come from the r x r core, without forming Delta W: with B = Q_B R_B and A^T = Q_A R_A (thin QR),
s B A = Q_B (s R_B R_A^T) Q_A^T, so Delta W has the singular values of s R_B R_A^T.

From the singular values sigma_1 >= ... >= sigma_r:
* effective rank (Roy & Vetterli 2007, "The effective rank: a measure of effective dimensionality"):
  exp(H(p)) with p_i = sigma_i / sum sigma, between 1 and r;
* stable rank: sum sigma_i^2 / sigma_1^2 = ||Delta W||_F^2 / ||Delta W||_2^2, at most the rank;
* energy of the top k: sum_{i<=k} sigma_i^2 / sum sigma_i^2.
"""

from __future__ import annotations

import math

import torch

from .dora import adapted_weight, magnitude_direction_change
from .lora import ALL_LINEAR_MODULES, base_weight, lora_layers


def update_singular_values(lora_layer, adapter: str = "default") -> torch.Tensor:
    """Singular values (r,) of s B A, descending, float32."""
    a = lora_layer.lora_A[adapter].weight.detach().float()          # r x in
    b = lora_layer.lora_B[adapter].weight.detach().float()          # out x r
    _, r_b = torch.linalg.qr(b)
    _, r_a = torch.linalg.qr(a.T)
    return torch.linalg.svdvals(lora_layer.scaling[adapter] * r_b @ r_a.T)


def effective_rank(singular_values: torch.Tensor) -> float:
    """exp of the entropy of sigma / sum(sigma) (Roy & Vetterli 2007); 0 for an all-zero update."""
    total = singular_values.sum()
    if total <= 0:
        return 0.0
    p = singular_values[singular_values > 0] / total
    return math.exp(float(-(p * p.log()).sum()))


def stable_rank(singular_values: torch.Tensor) -> float:
    """sum sigma^2 / max sigma^2; 0 for an all-zero update."""
    top = float(singular_values.max())
    return float((singular_values ** 2).sum()) / top ** 2 if top > 0 else 0.0


def energy_top(singular_values: torch.Tensor, k: int) -> float:
    """Share (0..1) of ||Delta W||_F^2 in the k largest singular values."""
    energy = (singular_values ** 2).sort(descending=True).values
    total = float(energy.sum())
    return float(energy[:k].sum()) / total if total > 0 else 0.0


@torch.no_grad()
def update_table(model, adapter: str = "default", modules=ALL_LINEAR_MODULES, top_k: int = 8) -> list[dict]:
    """One row per adapted layer and module: the update's size and how much rank it uses.

    Columns: layer, module, rank (r), relative_update ||s B A||_F / ||W||_F, effective_rank,
    stable_rank, energy_top_k, and for DoRA layers delta_magnitude / delta_direction of the
    effective weight against W (the DoRA paper's Delta M, Delta D).
    """
    rows = []
    for layer, kind, module in lora_layers(model, modules):
        sigma = update_singular_values(module, adapter)
        weight = base_weight(module)
        row = {"layer": layer, "module": kind, "rank": int(sigma.numel()),
               "relative_update": float(torch.linalg.norm(sigma)) / float(torch.linalg.norm(weight)),
               "effective_rank": effective_rank(sigma), "stable_rank": stable_rank(sigma),
               f"energy_top_{top_k}": energy_top(sigma, top_k)}
        if module.use_dora.get(adapter, False):
            row["delta_magnitude"], row["delta_direction"] = magnitude_direction_change(
                weight, adapted_weight(module, adapter))
        rows.append(row)
    if not rows:
        raise ValueError("the model has no LoRA layers on the named modules")
    return rows


def spectrum(model, layer: int, module: str, adapter: str = "default") -> torch.Tensor:
    """The singular values of one layer's update, for a plot."""
    for index, kind, lora_layer in lora_layers(model, (module,)):
        if index == layer:
            return update_singular_values(lora_layer, adapter)
    raise ValueError(f"no LoRA layer {module} in decoder layer {layer}")
