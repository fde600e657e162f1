"""The Trinity adapter: LoRA (Hu et al. 2021, arXiv:2106.09685) with rank-stabilized scaling
(rsLoRA, Kalajdzievski 2023, arXiv:2312.03732) and weight decomposition (DoRA, Liu et al. 2024,
arXiv:2402.09353), on an NF4-quantized base (QLoRA, Dettmers et al. 2023, arXiv:2305.14314).

For a frozen weight W (out x in), LoRA learns B (out x r, zero-initialised) and A (r x in):

    LoRA / rsLoRA:  y = W x + s * B A x,  s = alpha / r  (LoRA)  or  alpha / sqrt(r)  (rsLoRA)
    DoRA:           y = m / ||W + s B A||_row * (W + s B A) x,  m initialised to ||W||_row
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

# The 7 projections of every Gemma 3 decoder layer: attention and MLP.
ATTENTION_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_MODULES = ("gate_proj", "up_proj", "down_proj")
ALL_LINEAR_MODULES = ATTENTION_MODULES + MLP_MODULES


@dataclass(frozen=True)
class TrinityConfig:
    """LoRA hyper-parameters of the Trinity. Defaults: r=64, alpha=32, rsLoRA and DoRA on."""

    rank: int = 64
    alpha: float = 32
    use_rslora: bool = True
    use_dora: bool = True
    target_modules: tuple[str, ...] = ALL_LINEAR_MODULES
    dropout: float = 0.0

    def __post_init__(self):
        if self.rank < 1:
            raise ValueError(f"rank must be >= 1, got {self.rank}")
        if self.alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha}")
        if not self.target_modules:
            raise ValueError("target_modules must name at least one module")

    @property
    def scaling(self) -> float:
        """The factor s on B A: alpha/sqrt(r) under rsLoRA, alpha/r under plain LoRA."""
        return self.alpha / (math.sqrt(self.rank) if self.use_rslora else self.rank)

    def to_peft(self):
        """The equivalent `peft.LoraConfig` for a causal LM."""
        from peft import LoraConfig

        return LoraConfig(r=self.rank, lora_alpha=self.alpha, use_rslora=self.use_rslora, use_dora=self.use_dora,
                          target_modules=list(self.target_modules), lora_dropout=self.dropout, bias="none",
                          task_type="CAUSAL_LM")

    def to_dict(self) -> dict:
        return asdict(self) | {"scaling": self.scaling}


def layer_index(module_name: str) -> int:
    """The decoder layer of a module from its name: "model.layers.3.self_attn.q_proj" -> 3."""
    return int(module_name.split("layers.")[1].split(".")[0])


def lora_layers(model, modules=None, adapter: str = "default") -> list[tuple[int | None, str, object]]:
    """(decoder layer index, module type, peft LoRA layer) of every layer that carries `adapter`,
    in model order; only the module types named in `modules` when given (e.g. ("q_proj", "v_proj")).
    The index is None for an adapted module outside the layer stack (a multimodal projector)."""
    found = []
    for name, module in model.named_modules():
        kind = name.rsplit(".", 1)[-1]
        if hasattr(module, "lora_A") and adapter in module.lora_A and (modules is None or kind in modules):
            found.append((layer_index(name) if "layers." in name else None, kind, module))
    return found


def base_weight(lora_layer):
    """The frozen base weight of a peft LoRA layer as float32 (out x in), dequantized if 4-bit."""
    from peft.utils.integrations import dequantize_module_weight

    base = lora_layer.get_base_layer()
    if type(base).__name__ == "Linear4bit":
        # FSDP2 gathers a 4-bit weight as a plain tensor of packed codes; bitsandbytes' forward gives
        # it its quantization state back from the layer before use, and so must a reader.
        from bitsandbytes.nn.modules import fix_4bit_weight_quant_state_from_module

        fix_4bit_weight_quant_state_from_module(base)
    return dequantize_module_weight(base).detach().float()


def lora_delta(lora_layer, adapter: str = "default"):
    """The LoRA update s B A of a peft layer, float32 (out x in): B (out x r), A (r x in), s the scaling."""
    return lora_layer.scaling[adapter] * (lora_layer.lora_B[adapter].weight.float() @ lora_layer.lora_A[adapter].weight.float())


def trainable_parameters(peft_model) -> dict[str, int]:
    """{'trainable', 'total', 'percent'} as peft counts them (4-bit weights at their full count)."""
    trainable, total = peft_model.get_nb_trainable_parameters()
    return {"trainable": trainable, "total": total, "percent": 100 * trainable / total}


def adapter_parameters(linear_shapes: dict[str, tuple[int, int]], num_layers: int, rank: int,
                       target_modules=ALL_LINEAR_MODULES, use_dora: bool = False) -> int:
    """Trainable parameters of a LoRA adapter: r * (in + out) per targeted W (out x in), per layer.

    linear_shapes: {module: (out_features, in_features)} of one decoder layer
    (`lib.gemma3.Gemma3Shape.linear_shapes`). DoRA adds the magnitude vector, out per W.
    Raises KeyError for a target module the shapes do not have.
    """
    per_layer = 0
    for module in target_modules:
        out_features, in_features = linear_shapes[module]
        per_layer += rank * (in_features + out_features) + (out_features if use_dora else 0)
    return num_layers * per_layer


def lora_output_by_hand(lora_layer, x, adapter: str = "default"):
    """y = W x + s B A x from a peft LoRA layer's tensors (no peft call); x (..., in) -> (..., out).

    W is dequantized when 4-bit; everything in float32. Compare with the layer's own forward.
    """
    weight = base_weight(lora_layer)
    a, b = lora_layer.lora_A[adapter].weight.float(), lora_layer.lora_B[adapter].weight.float()
    return x @ weight.T + lora_layer.scaling[adapter] * (x @ a.T) @ b.T


def formula_check(peft_model, lora_layer, inputs: dict, by_hand=lora_output_by_hand, seed: int = 0) -> dict[str, float]:
    """Check a peft adapter against its formula on one layer and one prompt.

    inputs: the tokenizer's output for the prompt (input_ids (1, T), attention_mask).
    by_hand: the formula, `(lora_layer, x) -> y` (`lora_output_by_hand`, `lib.dora.dora_output_by_hand`).
    Returns {"zero_init_max_abs": max |adapted - base logits| with B = 0 as peft initialises it
    (0: the adapter starts as the identity), "formula_max_relative": max |layer output - by_hand| /
    max |by_hand| after B is drawn from N(0, 0.02^2) as if trained}. B stays drawn: the model is
    for looking at afterwards, not for training.
    """
    import torch

    captured = {}
    hook = lora_layer.register_forward_hook(lambda module, args, output: captured.update(x=args[0], y=output))
    try:
        with torch.no_grad():
            adapted = peft_model(**inputs).logits
            with peft_model.disable_adapter():
                base = peft_model(**inputs).logits
            b = lora_layer.lora_B["default"].weight
            torch.nn.init.normal_(b, std=0.02, generator=torch.Generator(b.device).manual_seed(seed))
            peft_model(**inputs)
            expected = by_hand(lora_layer, captured["x"])
    finally:
        hook.remove()
    return {"zero_init_max_abs": float((adapted - base).abs().max()),
            "formula_max_relative": float((captured["y"] - expected).abs().max() / expected.abs().max())}
