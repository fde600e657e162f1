"""4-bit quantization of weight matrices, measured: NF4 and FP4 (bitsandbytes) against a plain int4.

QLoRA (Dettmers et al. 2023, arXiv:2305.14314) stores each frozen weight in blocks of 64 values:
every value becomes a 4-bit index into a 16-entry code, and each block keeps its absolute maximum
(absmax) so that w ~= code[index] * absmax. NF4's code holds the quantiles of a standard normal
(section 3 of the paper), FP4's a 4-bit float grid; the int4 baseline here uses 15 evenly spaced
levels (-7..7) / 7. Double quantization stores the fp32 absmax constants themselves in 8 bits, in
blocks of 256 with one fp32 constant each: 32/64 = 0.5 bits of overhead per parameter become
8/64 + 32/(64*256) = 0.127 (paper, section 3, "Double Quantization").
"""

from __future__ import annotations

import torch

from .lora import ALL_LINEAR_MODULES, layer_index

BLOCKSIZE = 64
METHODS = ("nf4", "fp4", "int4")


def absmax_int4(weight: torch.Tensor, blocksize: int = BLOCKSIZE) -> torch.Tensor:
    """Quantize to symmetric uniform int4 per block of `blocksize` values, and dequantize.

    weight: any shape with numel divisible by `blocksize`; returns float32 of the same shape.
    Each value is rounded to one of the 15 levels k/7 * absmax(block), k = -7..7.
    Raises ValueError when numel is not a multiple of `blocksize`.
    """
    if weight.numel() % blocksize:
        raise ValueError(f"{weight.numel()} values do not split into blocks of {blocksize}")
    blocks = weight.float().reshape(-1, blocksize)
    absmax = blocks.abs().amax(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    codes = torch.round(blocks / absmax * 7).clamp(-7, 7)
    return (codes * absmax / 7).reshape(weight.shape)


def bnb_quantize(weight: torch.Tensor, quant_type: str, double_quant: bool = False, blocksize: int = BLOCKSIZE):
    """(dequantized float32 weight, packed uint8 tensor, bitsandbytes QuantState) for nf4 or fp4."""
    import bitsandbytes.functional as bnbf

    packed, state = bnbf.quantize_4bit(weight.float().contiguous(), blocksize=blocksize, quant_type=quant_type,
                                       compress_statistics=double_quant)
    return bnbf.dequantize_4bit(packed, state).float(), packed, state


def quantize_dequantize(weight: torch.Tensor, method: str) -> torch.Tensor:
    """The weight after a 4-bit round trip with `method` ("nf4", "fp4" or "int4"), float32."""
    if method == "int4":
        return absmax_int4(weight)
    if method in ("nf4", "fp4"):
        return bnb_quantize(weight, method)[0]
    raise ValueError(f"unknown method {method!r}: use one of {METHODS}")


def relative_error(weight: torch.Tensor, approximation: torch.Tensor) -> float:
    """||W - W_hat||_F / ||W||_F."""
    weight = weight.float()
    return float(torch.linalg.norm(weight - approximation) / torch.linalg.norm(weight))


def linear_weights(model, modules=ALL_LINEAR_MODULES):
    """Yield (layer index, module type, weight) for each projection of each decoder layer."""
    for name, module in model.named_modules():
        kind = name.rsplit(".", 1)[-1]
        if kind in modules and hasattr(module, "weight"):
            yield layer_index(name), kind, module.weight.detach()


def reconstruction_errors(model, methods=METHODS) -> list[dict]:
    """One row per (layer, module type, method): squared error and squared norm, for aggregation.

    `model` holds unquantized weights (bf16 or fp32). Aggregate a group's relative Frobenius error
    as sqrt(sum(error_sq) / sum(norm_sq)); `relative_error` is the per-matrix value.
    """
    rows = []
    for layer, kind, weight in linear_weights(model):
        weight = weight.float()
        norm_sq = float(torch.linalg.norm(weight) ** 2)
        for method in methods:
            error_sq = float(torch.linalg.norm(weight - quantize_dequantize(weight, method)) ** 2)
            rows.append({"layer": layer, "module": kind, "method": method, "error_sq": error_sq, "norm_sq": norm_sq,
                         "relative_error": (error_sq / norm_sq) ** 0.5})
    return rows


def quant_state_tensors(state) -> list[torch.Tensor]:
    """Every tensor a bitsandbytes QuantState keeps: absmax, code table and, with double
    quantization, the second-level absmax, its code table and the offset."""
    tensors = [state.absmax, state.code]
    if state.nested:
        offset = state.offset if torch.is_tensor(state.offset) else torch.tensor(state.offset, dtype=torch.float32)
        tensors += [state.state2.absmax, state.state2.code, offset]
    return [t for t in tensors if t is not None]


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def stored_bits(weight: torch.Tensor, double_quant: bool, quant_type: str = "nf4") -> dict[str, float]:
    """Bits per parameter that bitsandbytes actually stores for `weight`, by part.

    Counts the bytes of every tensor the 4-bit layer keeps: the packed codes, the absmax constants
    (fp32, or uint8 with double quantization), with double quantization the second-level
    constants (fp32 absmax per 256 blocks, code table, offset), and the 16-entry code table.
    """
    _, packed, state = bnb_quantize(weight, quant_type, double_quant)
    n = weight.numel()
    parts = {"codes": _bytes([packed]) * 8 / n, "absmax": _bytes([state.absmax]) * 8 / n,
             "code table": _bytes([state.code]) * 8 / n}
    if state.nested:
        parts["second-level constants"] = _bytes(quant_state_tensors(state)[2:]) * 8 / n
    parts["total"] = sum(parts.values())
    return parts


def stored_bytes(model) -> int:
    """Bytes of every parameter and buffer, plus the quantization constants of 4-bit weights.

    transformers' `get_memory_footprint` counts parameters and buffers only, so for a 4-bit model
    it misses the absmax constants (0.5 or 0.127 bits per quantized parameter).
    """
    total = _bytes(list(model.parameters()) + list(model.buffers()))
    for parameter in model.parameters():
        state = getattr(parameter, "quant_state", None)
        if state is not None:
            total += _bytes(quant_state_tensors(state))
    return total


def normalized_by_block(weight: torch.Tensor, blocksize: int = BLOCKSIZE) -> torch.Tensor:
    """Every value divided by its block's absmax (in [-1, 1]): what the 4-bit code must cover."""
    blocks = weight.float().reshape(-1, blocksize)
    return (blocks / blocks.abs().amax(dim=1, keepdim=True)).flatten()


def code_levels(quant_type: str = "nf4") -> torch.Tensor:
    """The 16 values of bitsandbytes' 4-bit code (`nf4` or `fp4`), sorted, in [-1, 1]."""
    import bitsandbytes.functional as bnbf

    return bnbf.get_4bit_type(quant_type, device="cpu").sort().values


def weight_memory_gib(counts: dict[str, int], linear_bits: float, other_bits: float = 16,
                      modules=ALL_LINEAR_MODULES) -> float:
    """GiB of weights when the projections store `linear_bits` per parameter and the rest `other_bits`.

    counts: `lib.gemma3.parameter_counts`. bitsandbytes quantizes only nn.Linear layers: embedding
    and norms stay in the compute dtype (16 bits) under QLoRA.
    """
    linear = sum(counts[m] for m in modules)
    return (linear * linear_bits + (counts["total"] - linear) * other_bits) / 8 / 2**30
