"""LoRA blending: adapters trained on different tasks combined into one, and several adapters served
from one base model.

`blend` calls peft's `add_weighted_adapter` (peft's "Model merging" guide,
https://huggingface.co/docs/peft/developer_guides/model_merging): linear and cat combine A and B,
svd takes the truncated SVD of the weighted sum of the updates, ties (Yadav et al. 2023, arXiv
2306.01708) and dare_ties / dare_linear (Yu et al. 2023, arXiv 2311.03099) prune and sign-elect
before summing, magnitude_prune keeps the largest entries. Where peft refuses a combination the
reason is returned, not raised.

DoRA adapters: add_weighted_adapter combines lora_A and lora_B only. The blended adapter is created
as a DoRA adapter with its magnitude vector initialised from the base weights, so a DoRA
adapter's learned magnitudes do not carry over, even at weights (1, 0) (`tests/test_blending.py`
measures it). `blend_effective` is the way that works for any adapter: it sums the *effective*
weight changes W'_i - W (DoRA's magnitude included, `lib.dora.adapted_weight`) and writes the sum
as a plain LoRA adapter of rank k by truncated SVD (Eckart-Young: the best rank-k approximation in
Frobenius norm), computed by randomized SVD where k is well below the layer's size (`top_singular`).
"""

from __future__ import annotations

import time

import torch

from .dora import adapted_weight
from .lora import base_weight, lora_layers

METHODS = ("linear", "cat", "svd", "ties", "dare_ties", "magnitude_prune")


def load_adapters(base_model, adapters: dict[str, str]):
    """A PeftModel with every adapter of {name: folder} loaded on one base, the first active."""
    from peft import PeftModel

    names = list(adapters)
    model = PeftModel.from_pretrained(base_model, adapters[names[0]], adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(adapters[name], adapter_name=name)
    model.set_adapter(names[0])
    return model


def _check_name(name: str) -> None:
    if not name or "." in name:
        raise ValueError(f"adapter name {name!r}: peft stores adapters as modules, whose names cannot be empty or hold '.'")


def blend(model, names: list[str], weights: list[float], method: str, blend_name: str,
          density: float = 0.5) -> str | None:
    """Add `blend_name` = the `method` blend of `names` with `weights` and make it active.
    Returns None on success, else peft's reason for refusing (the model is left unchanged)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; use one of {METHODS}")
    _check_name(blend_name)
    extra = {"density": density} if method in ("ties", "dare_ties", "magnitude_prune") else {}
    try:
        model.add_weighted_adapter(names, weights, blend_name, combination_type=method, **extra)
    except (ValueError, NotImplementedError, RuntimeError) as error:
        if blend_name in model.peft_config:
            model.delete_adapter(blend_name)
        return f"{type(error).__name__}: {error}"
    model.set_adapter(blend_name)
    return None


@torch.no_grad()
def top_singular(matrix: torch.Tensor, k: int, oversample: int = 10, power_iterations: int = 4):
    """The k largest singular triplets (U: m x k, S: k, Vh: k x n) of a float `matrix` (m x n).

    Randomized SVD (Halko, Martinsson & Tropp 2011, "Finding structure with randomness",
    `torch.svd_lowrank`) with k + `oversample` columns and `power_iterations`, where that is at most
    half of min(m, n); an exact SVD otherwise. At k=128 on 640 x 2048 (the 270M's MLP layers) it
    takes a third of the exact SVD's time; on a slowly decaying spectrum (s_i ~ i^-1/2, the hard
    case) its rank-k approximation's error is within 0.5% of the optimum, and the energy it keeps
    within 0.3% of the exact truncation's (tests/test_blending.py holds it to 1%). Seeded and on a
    forked RNG: the same result every call, and the caller's random stream untouched."""
    m, n = matrix.shape
    q = k + oversample
    if 2 * q > min(m, n):
        u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
        return u[:, :k], s[:k], vh[:k]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        u, s, v = torch.svd_lowrank(matrix, q=q, niter=power_iterations)
    return u[:, :k], s[:k], v[:, :k].T


@torch.no_grad()  # it writes the adapter's weights; autograd has nothing to record
def blend_effective(model, names: list[str], weights: list[float], blend_name: str, rank: int) -> dict:
    """Add `blend_name`: a plain LoRA adapter (rank `rank`, alpha = rank, so scaling 1) whose
    update is the best rank-`rank` approximation of sum_i w_i (W'_i - W), and make it active.
    Returns {"layers", "energy_kept_median"}: the share of the summed update's squared Frobenius
    norm the rank-`rank` truncation keeps, median over layers."""
    _check_name(blend_name)
    from peft import LoraConfig

    first = model.peft_config[names[0]]
    model.add_adapter(blend_name, LoraConfig(r=rank, lora_alpha=rank, use_dora=False, lora_dropout=0.0,
                                             target_modules=first.target_modules, bias="none"))
    kept = []
    for _, _, layer in lora_layers(model, adapter=blend_name):
        weight = base_weight(layer)
        total = sum(w * (adapted_weight(layer, name) - weight) for name, w in zip(names, weights))
        k = min(rank, *total.shape)  # a layer narrower than the rank: the extra directions stay zero
        u, s, vh = top_singular(total, k)
        root = s.sqrt()
        b, a = layer.lora_B[blend_name].weight, layer.lora_A[blend_name].weight
        b.zero_()
        a.zero_()
        b[:, :k].copy_((u * root).to(b.dtype))
        a[:k].copy_((root[:, None] * vh).to(a.dtype))
        energy = float(total.square().sum())  # = the sum of all squared singular values
        kept.append(float(s.square().sum()) / energy if energy else 1.0)
    model.set_adapter(blend_name)
    kept.sort()
    return {"layers": len(kept), "energy_kept_median": kept[len(kept) // 2] if kept else None}


@torch.no_grad()
def switch_cost(model, names: list[str], input_ids: torch.Tensor, repeats: int = 5) -> list[dict]:
    """Serving several adapters from one base: per adapter, the median seconds of `set_adapter`
    and of one forward pass right after it, over `repeats` rounds of switching through all."""
    device = next(model.parameters()).device
    ids = input_ids.to(device)
    switch, forward = {n: [] for n in names}, {n: [] for n in names}
    for _ in range(repeats):
        for name in names:
            started = time.perf_counter()
            model.set_adapter(name)
            switch[name].append(time.perf_counter() - started)
            started = time.perf_counter()
            model(input_ids=ids, use_cache=False)
            forward[name].append(time.perf_counter() - started)
    median = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    return [{"adapter": n, "set_adapter_ms": 1000 * median(switch[n]), "forward_s": median(forward[n])}
            for n in names]


def adapter_bytes(model, name: str) -> int:
    """Bytes of one adapter's tensors (A, B and DoRA magnitudes) as they sit in memory."""
    total = 0
    for parameter_name, tensor in model.named_parameters():
        if f".{name}." in parameter_name or parameter_name.endswith(f".{name}"):
            total += tensor.numel() * tensor.element_size()
    return total
