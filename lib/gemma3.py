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
            query_pre_attn_scalar=self.query_pre_attn_scalar, tie_word_embeddings=True)


GEMMA3_SHAPES: dict[str, Gemma3Shape] = {s.name: s for s in [
    Gemma3Shape("270M", 640, 2048, 18, 4, 1, 256, 262_144, 512, 32_768),
    Gemma3Shape("1B", 1152, 6912, 26, 4, 1, 256, 262_144, 512, 32_768),
    Gemma3Shape("4B", 2560, 10240, 34, 8, 4, 256, 262_208, 1024, 131_072),
    Gemma3Shape("12B", 3840, 15360, 48, 16, 8, 256, 262_208, 1024, 131_072),
    Gemma3Shape("27B", 5376, 21504, 62, 32, 16, 128, 262_208, 1024, 131_072, query_pre_attn_scalar=168),
]}


def shape_of(name_or_config) -> Gemma3Shape:
    """A Gemma3Shape from a built-in name ("270M", "1B", "4B", "12B", "27B", any case) or any
    Gemma 3 config.

    Accepts a transformers config (Gemma3TextConfig, or Gemma3Config whose `text_config` is used).
    Raises KeyError for an unknown name.
    """
    if isinstance(name_or_config, Gemma3Shape):
        return name_or_config
    if isinstance(name_or_config, str):
        key = {name.lower(): name for name in GEMMA3_SHAPES}.get(name_or_config.lower())
        if key is None:
            raise KeyError(f"unknown Gemma 3 size {name_or_config!r}; built in: {', '.join(GEMMA3_SHAPES)}")
        return GEMMA3_SHAPES[key]
    config = getattr(name_or_config, "text_config", None) or name_or_config
    return Gemma3Shape(getattr(config, "name_or_path", "") or "custom", config.hidden_size, config.intermediate_size,
                       config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads,
                       config.head_dim, config.vocab_size, config.sliding_window, config.max_position_embeddings,
                       int(config.query_pre_attn_scalar))


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
