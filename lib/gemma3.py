"""The Gemma 3 family's text shapes, and parameter counts computed from them.

The dimensions below are those of the published configs (config.json of google/gemma-3-270m,
-1b-pt, -4b-pt, -12b-pt, -27b-pt on the Hugging Face hub; the 4B/12B/27B are multimodal and these
are their `text_config`). They were cross-checked here: the total of `parameter_counts` equals
keras-hub's published presets for 1B (999,885,952), and for 4B and 12B (3,880,099,328 /
11,765,788,416) once the 64 image-token rows of the multimodal vocabulary (262,208 vs 262,144)
are added; and the LoRA r=64 counts equal the trainable parameters that peft reported on an H200 for
random-init models of these shapes (../shared/reference/gpu-anchor-measurements.md).
The 270M row is the embedded model's own config. The vision tower of 4B/12B/27B (SigLIP, ~0.4 B
parameters) is not counted: the course fine-tunes and measures the language model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .lora import ALL_LINEAR_MODULES


@dataclass(frozen=True)
class Gemma3Shape:
    """The dimensions that fix a Gemma 3 decoder's parameter count and memory."""

    name: str
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    sliding_window: int
    max_position_embeddings: int
    query_pre_attn_scalar: int = 256
    global_every: int = 6                 # `sliding_window_pattern`: layers 6, 12, ... attend globally
    rope_theta_global: float = 1_000_000.0
    rope_theta_local: float = 10_000.0
    rope_scaling_global: float = 1.0      # linear position interpolation of the global layers (4B-27B: 8)

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(out_features, in_features) of the 7 projections of one decoder layer."""
        q, kv, h, i = self.num_attention_heads * self.head_dim, self.num_key_value_heads * self.head_dim, \
            self.hidden_size, self.intermediate_size
        return {"q_proj": (q, h), "k_proj": (kv, h), "v_proj": (kv, h), "o_proj": (h, q),
                "gate_proj": (i, h), "up_proj": (i, h), "down_proj": (h, i)}

    def to_config(self):
        """A `transformers.Gemma3TextConfig` with these dimensions (RoPE settings left at defaults:
        they change no shape or memory)."""
        from transformers import Gemma3TextConfig

        return Gemma3TextConfig(
            hidden_size=self.hidden_size, intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers, num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads, head_dim=self.head_dim, vocab_size=self.vocab_size,
            sliding_window=self.sliding_window, max_position_embeddings=self.max_position_embeddings,
            query_pre_attn_scalar=self.query_pre_attn_scalar, tie_word_embeddings=True,
            layer_types=self.layer_types())

    def layer_types(self) -> list[str]:
        """transformers' per-layer attention kinds: "full_attention" every `global_every`-th layer
        (1-based), "sliding_attention" (a window of `sliding_window` tokens) elsewhere. Raises
        ValueError for a shape read from a config whose layers follow no such period."""
        if self.global_every < 1:
            raise ValueError(f"{self.name}: the layer kinds follow no regular pattern; pass them explicitly")
        return ["full_attention" if (i + 1) % self.global_every == 0 else "sliding_attention"
                for i in range(self.num_hidden_layers)]


GEMMA3_SHAPES: dict[str, Gemma3Shape] = {s.name: s for s in [
    Gemma3Shape("270M", 640, 2048, 18, 4, 1, 256, 262_144, 512, 32_768),
    Gemma3Shape("1B", 1152, 6912, 26, 4, 1, 256, 262_144, 512, 32_768),
    Gemma3Shape("4B", 2560, 10240, 34, 8, 4, 256, 262_208, 1024, 131_072, rope_scaling_global=8.0),
    Gemma3Shape("12B", 3840, 15360, 48, 16, 8, 256, 262_208, 1024, 131_072, rope_scaling_global=8.0),
    Gemma3Shape("27B", 5376, 21504, 62, 32, 16, 128, 262_208, 1024, 131_072, query_pre_attn_scalar=168,
                rope_scaling_global=8.0),
]}


def shape_of(name_or_config) -> Gemma3Shape:
    """A Gemma3Shape from a built-in name ("270M", "1B", "4B", "12B", "27B", any case), a model id
    that names one ("gemma-3-270m", "google/gemma-3-4b-it", "unsloth/gemma-3-12b-it-bnb-4bit") or
    any Gemma 3 config.

    Accepts a transformers config (Gemma3TextConfig, or Gemma3Config whose `text_config` is used).
    Raises KeyError for an unknown name.
    """
    if isinstance(name_or_config, Gemma3Shape):
        return name_or_config
    if isinstance(name_or_config, str):
        named = re.search(r"gemma-3-(\d+[mb])\b", name_or_config.lower())
        size = named.group(1) if named else name_or_config.lower()
        key = {name.lower(): name for name in GEMMA3_SHAPES}.get(size)
        if key is None:
            raise KeyError(f"unknown Gemma 3 size {name_or_config!r}; built in: {', '.join(GEMMA3_SHAPES)}")
        return GEMMA3_SHAPES[key]
    config = getattr(name_or_config, "text_config", None) or name_or_config
    rope = rope_settings(config)
    return Gemma3Shape(getattr(config, "name_or_path", "") or "custom", config.hidden_size, config.intermediate_size,
                       config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads,
                       config.head_dim, config.vocab_size, config.sliding_window, config.max_position_embeddings,
                       int(config.query_pre_attn_scalar), global_every=_global_every(config.layer_types),
                       rope_theta_global=rope["full_attention"][0], rope_theta_local=rope["sliding_attention"][0],
                       rope_scaling_global=rope["full_attention"][1])


def _global_every(layer_types: list[str]) -> int:
    """The period of a regular local/global pattern; 0 when the layers follow no such period."""
    globals_ = [i + 1 for i, kind in enumerate(layer_types) if kind == "full_attention"]
    if not globals_:
        return 0
    period = globals_[0]
    regular = all(kind == ("full_attention" if (i + 1) % period == 0 else "sliding_attention")
                  for i, kind in enumerate(layer_types))
    return period if regular else 0


def rope_settings(config) -> dict[str, tuple[float, float]]:
    """{layer kind: (RoPE base theta, linear scaling factor)} as a transformers Gemma 3 config sets
    them (`rope_parameters` per layer kind in transformers 5; `rope_theta`, `rope_local_base_freq`
    and `rope_scaling` before)."""
    config = getattr(config, "text_config", None) or config
    parameters = getattr(config, "rope_parameters", None)
    if isinstance(parameters, dict) and "full_attention" in parameters:
        return {kind: (float(p["rope_theta"]), float(p.get("factor", 1.0) if p.get("rope_type") == "linear" else 1.0))
                for kind, p in parameters.items()}
    scaling = getattr(config, "rope_scaling", None) or {}
    return {"full_attention": (float(config.rope_theta), float(scaling.get("factor", 1.0))),
            "sliding_attention": (float(config.rope_local_base_freq), 1.0)}


def kv_cache_bytes(shape: Gemma3Shape | str, tokens: int, bytes_per_value: int = 2,
                   layer_types: list[str] | None = None) -> int:
    """Bytes of the key/value cache for one sequence of `tokens` tokens.

    Each layer stores a key and a value of num_key_value_heads x head_dim per token it keeps: a
    global layer keeps every token, a sliding-window layer the sliding_window - 1 tokens before the
    next query (which sees those and itself: the window of the Gemma 3 technical report, arXiv
    2503.19786, section 2.1; transformers' sliding cache keeps exactly these). `layer_types`
    overrides the shape's pattern (e.g. all "full_attention" for the all-global counterfactual);
    bytes_per_value 2 for bf16/fp16.
    """
    shape = shape_of(shape)
    kinds = layer_types if layer_types is not None else shape.layer_types()
    if len(kinds) != shape.num_hidden_layers:
        raise ValueError(f"{len(kinds)} layer types for a model of {shape.num_hidden_layers} layers")
    per_token = 2 * shape.num_key_value_heads * shape.head_dim * bytes_per_value
    kept = sum(tokens if kind == "full_attention" else min(tokens, shape.sliding_window - 1) for kind in kinds)
    return per_token * kept


def kv_cache_comparison(shape: Gemma3Shape | str, tokens: int, bytes_per_value: int = 2) -> dict[str, float]:
    """The 5:1 pattern's KV cache against the same model with every layer global, one sequence.

    Returns KiB per token and GiB for both, `saved` (0..1) and each one's share of memory: KV cache
    over (weights + KV cache), weights in the same bytes_per_value (the quantity the Gemma 3
    technical report's figure 5 plots, at 32K tokens).
    """
    shape = shape_of(shape)
    weights = bytes_per_value * parameter_counts(shape)["total"]
    pattern = kv_cache_bytes(shape, tokens, bytes_per_value)
    everywhere = kv_cache_bytes(shape, tokens, bytes_per_value, ["full_attention"] * shape.num_hidden_layers)
    return {"tokens": tokens, "KiB/token pattern": pattern / tokens / 1024, "KiB/token all global": everywhere / tokens / 1024,
            "pattern_gib": pattern / 2 ** 30, "all_global_gib": everywhere / 2 ** 30, "saved": 1 - pattern / everywhere,
            "share_of_memory_all_global": everywhere / (weights + everywhere),
            "share_of_memory_pattern": pattern / (weights + pattern)}


def parameter_counts(shape: Gemma3Shape | str) -> dict[str, int]:
    """Parameters of the language model by group: each projection type, embedding, norms, total.

    The embedding is tied to the output head (counted once), as in every Gemma 3 checkpoint. Norms:
    4 RMSNorms of hidden_size per layer, q/k norms of head_dim, and the final norm.
    """
    shape = shape_of(shape)
    layers = shape.num_hidden_layers
    counts = {name: layers * out * inp for name, (out, inp) in shape.linear_shapes().items()}
    counts["embedding"] = shape.vocab_size * shape.hidden_size
    counts["norms"] = layers * (4 * shape.hidden_size + 2 * shape.head_dim) + shape.hidden_size
    counts["total"] = sum(counts.values())
    return counts


def linear_parameter_share(shape: Gemma3Shape | str, modules=ALL_LINEAR_MODULES) -> float:
    """Fraction (0..1) of all parameters that sit in the named projection types."""
    counts = parameter_counts(shape)
    return sum(counts[m] for m in modules) / counts["total"]
