"""Looking inside Gemma 3's attention: what each layer attends to, and what a layer loses when it
sees less (or gains when it sees more).

Gemma 3 interleaves five sliding-window ("local") layers with one global layer (Gemma 3 technical
report, arXiv 2503.19786, section 2.1); a local layer's query at position i sees keys
i - sliding_window + 1 .. i, a global layer's every key up to i. The statistics here are computed
per layer from the attention probabilities of the eager implementation, reduced while the forward
pass runs (a 2,048-token sequence would otherwise hold 18 x 4 x 2048^2 probabilities):

* mean attention distance: sum_j a_ij (i - j), in tokens, averaged over queries and heads;
* attention entropy: -sum_j a_ij log2 a_ij, in bits, averaged the same way (0 = one key gets
  everything, log2(i + 1) = uniform over all visible keys).

`attention_span` changes which keys a layer may see at inference without touching its weights or
its rotary embedding (a global layer keeps RoPE base 1M when windowed): only the mask changes, so
a loss difference is what the hidden keys carried.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

FULL, SLIDING = "full_attention", "sliding_attention"


def decoder_layers(model) -> list:
    """The decoder layers of a Gemma 3 causal LM (plain, peft-wrapped or multimodal)."""
    for module in model.modules():
        layers = getattr(module, "layers", None)
        if isinstance(layers, torch.nn.ModuleList) and len(layers) and hasattr(layers[0], "self_attn"):
            return list(layers)
    raise ValueError(f"no decoder layers with self_attn found in {type(model).__name__}")


def layer_kinds(model) -> list[str]:
    """The attention kind of each decoder layer as its config declares it (FULL or SLIDING)."""
    return [layer.self_attn.layer_type for layer in decoder_layers(model)]


@contextmanager
def eager_attention(model):
    """Run `model` with transformers' eager attention (the only one that returns probabilities)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # through peft
    before = inner.config._attn_implementation
    inner.set_attn_implementation("eager")
    try:
        yield model
    finally:
        inner.set_attn_implementation(before)


@dataclass
class AttentionStats:
    """Per-layer attention statistics of one sequence (see the module docstring for units)."""

    layer: int
    kind: str
    mean_distance: float  # tokens
    entropy_bits: float
    tokens: int


def _reduce(probabilities: torch.Tensor, min_query: int) -> tuple[float, float]:
    """(mean distance, mean entropy in bits) over heads and the queries from `min_query` on.

    probabilities: [batch, heads, queries, keys], each query row summing to 1, causal.
    """
    p = probabilities.float()[:, :, min_query:, :]
    queries, keys = p.shape[-2], p.shape[-1]
    positions = torch.arange(keys, dtype=torch.float32, device=p.device)
    query_positions = positions[min_query:min_query + queries].view(-1, 1)
    distance = (p * (query_positions - positions.view(1, -1))).sum(-1)
    entropy = -(p * torch.log2(p.clamp_min(1e-30))).sum(-1)
    return distance.mean().item(), entropy.mean().item()


@torch.no_grad()
def attention_statistics(model, input_ids: torch.Tensor, min_query: int = 0) -> list[AttentionStats]:
    """Mean attention distance and entropy per layer for one unpadded batch of `input_ids` [b, T].

    `min_query`: only queries at positions >= min_query count (e.g. the window size, to compare
    layers where a local layer's window is full). Runs the model once in eager attention.
    """
    if input_ids.shape[1] <= min_query:
        raise ValueError(f"min_query {min_query} leaves no query in a sequence of {input_ids.shape[1]} tokens")
    layers, kinds, stats, hooks = decoder_layers(model), layer_kinds(model), {}, []

    def keep(index):
        def hook(module, args, output):
            stats[index] = _reduce(output[1], min_query)
        return hook

    with eager_attention(model):
        try:
            for i, layer in enumerate(layers):
                hooks.append(layer.self_attn.register_forward_hook(keep(i)))
            model(input_ids=input_ids.to(next(model.parameters()).device), use_cache=False)
        finally:
            for h in hooks:
                h.remove()
    return [AttentionStats(i, kinds[i], *stats[i], tokens=input_ids.shape[1]) for i in range(len(layers))]


@torch.no_grad()
def attention_map(model, input_ids: torch.Tensor, layer: int) -> torch.Tensor:
    """The head-averaged attention probabilities [T, T] of one layer for one sequence [1, T]."""
    captured = {}
    target = decoder_layers(model)[layer].self_attn
    hook = target.register_forward_hook(lambda m, a, out: captured.update(p=out[1][0].float().mean(0).cpu()))
    with eager_attention(model):
        try:
            model(input_ids=input_ids.to(next(model.parameters()).device), use_cache=False)
        finally:
            hook.remove()
    return captured["p"]


def visible_keys(length: int, window: int | None, device=None) -> torch.Tensor:
    """Boolean [T, T]: query i may see key j (causal, and within `window` tokens when given)."""
    i = torch.arange(length, device=device).view(-1, 1)
    j = torch.arange(length, device=device).view(1, -1)
    allowed = j <= i
    return allowed & (i - j < window) if window is not None else allowed


def _mask_like(incoming, allowed: torch.Tensor, dtype: torch.dtype):
    """`allowed` in the format the attention implementation was given: bool for sdpa, an additive
    float mask for eager."""
    if isinstance(incoming, torch.Tensor) and incoming.dtype != torch.bool:
        mask = torch.zeros(allowed.shape, dtype=incoming.dtype, device=allowed.device)
        return mask.masked_fill(~allowed, torch.finfo(incoming.dtype).min)[None, None]
    return allowed[None, None]


@contextmanager
def attention_span(model, spans: dict[int, int | None]):
    """Within the block, layer i attends to the last spans[i] tokens (None = all earlier tokens).

    Only the mask changes: weights and rotary embeddings stay those of the layer's own kind. For
    unpadded batches (every sequence the same length, no padding): raises ValueError if the mask the
    model built shows padding. Layers not named keep their own span.
    """
    layers = decoder_layers(model)
    unknown = [i for i in spans if not 0 <= i < len(layers)]
    if unknown:
        raise ValueError(f"no layer {unknown} in a model of {len(layers)} layers")
    sliding_window = model.config.get_text_config().sliding_window
    hooks, saved = [], {}

    def override(index, span):
        own_span = sliding_window if layers[index].self_attn.is_sliding else None

        def hook(module, args, kwargs):
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            length = hidden.shape[1]
            incoming = kwargs.get("attention_mask")
            if isinstance(incoming, torch.Tensor):
                expected = _mask_like(incoming, visible_keys(length, own_span, hidden.device), incoming.dtype)
                if incoming.shape[-2:] != (length, length) or not bool((incoming == expected).all()):
                    raise ValueError("attention_span needs unpadded batches of full sequences (no padding, no cache)")
            kwargs["attention_mask"] = _mask_like(incoming, visible_keys(length, span, hidden.device), hidden.dtype)
            return args, kwargs
        return hook

    try:
        for index, span in spans.items():
            attn = layers[index].self_attn
            saved[index] = attn.sliding_window
            attn.sliding_window = span  # read by flash/flex kernels; sdpa and eager follow the mask
            hooks.append(layers[index].register_forward_pre_hook(override(index, span), with_kwargs=True))
        yield model
    finally:
        for h in hooks:
            h.remove()
        for index, window in saved.items():
            layers[index].self_attn.sliding_window = window


def spans_for(kinds: list[str], make_global_local: list[int] = (), make_local_global: list[int] = (),
              window: int | None = None) -> dict[int, int | None]:
    """The `attention_span` argument that windows the named global layers (to `window` tokens) and
    opens the named local layers to every earlier token. Raises ValueError for a layer of the wrong kind."""
    wrong = [i for i in make_global_local if kinds[i] != FULL] + [i for i in make_local_global if kinds[i] != SLIDING]
    if wrong:
        raise ValueError(f"layers {wrong} are not of the kind the change starts from")
    if make_global_local and window is None:
        raise ValueError("windowing a global layer needs the window size")
    return {**{i: window for i in make_global_local}, **{i: None for i in make_local_global}}


def cached_tokens(kinds: list[str], window: int, tokens: int, spans: dict[int, int | None] | None = None) -> int:
    """Token positions held in the KV cache over all layers after `tokens` tokens: a layer with span
    None keeps every token, one with span w the w - 1 before the next query (`lib.gemma3.kv_cache_bytes`).
    `spans` overrides layers' own spans (None for global layers, `window` for sliding ones)."""
    own = {i: None if kind == FULL else window for i, kind in enumerate(kinds)} | (spans or {})
    return sum(tokens if span is None else min(tokens, span - 1) for span in own.values())


def source_blocks(tokenizer, texts: list[str], block_tokens: int, count: int) -> torch.Tensor:
    """[count, block_tokens] token ids: BOS, then the next block_tokens - 1 tokens of `texts`, in
    order (every block starts as a document does: Gemma 3 puts much attention on its first token).
    Raises ValueError when the texts hold fewer than `count` blocks."""
    blocks, step = [], block_tokens - 1
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        blocks += [[tokenizer.bos_token_id] + ids[i:i + step] for i in range(0, len(ids) - step + 1, step)]
        if len(blocks) >= count:
            return torch.tensor(blocks[:count])
    raise ValueError(f"the texts hold {len(blocks)} blocks of {block_tokens} tokens, {count} asked for")


@torch.no_grad()
def block_loss(model, blocks: torch.Tensor, from_position: int, chunk_tokens: int = 256) -> float:
    """Mean next-token loss (nats/token) of the tokens at positions >= from_position of each
    unpadded block [n, T]: the tokens a sliding-window layer sees only part of the context for
    when from_position is the window. The head runs `chunk_tokens` rows at a time."""
    from .loss import causal_lm_parts, chunked_cross_entropy

    if from_position >= blocks.shape[1] - 1:
        raise ValueError(f"from_position {from_position} leaves no scored token in blocks of {blocks.shape[1]} tokens")
    decoder, head, softcap = causal_lm_parts(model)
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for block in blocks:
        ids = block[None].to(device)
        labels = ids.clone()
        labels[:, :from_position] = -100
        hidden = decoder(input_ids=ids, use_cache=False).last_hidden_state
        total += chunked_cross_entropy(hidden, labels, head.weight, chunk_tokens, softcap, num_items=1).item()
        count += int((labels[:, 1:] != -100).sum())
    return total / count


def span_cost(model, spans: dict[int, int | None], window: int, *, blocks: torch.Tensor | None = None,
              records=None, tokenizer=None) -> dict:
    """What running `model` with `spans` (attention_span's argument) costs and saves.

    Scored on unpadded real-text `blocks` [n, T] (mean loss of the tokens past `window`, nats/token)
    or on conversation `records` with their `tokenizer` (response loss, `lib.evaluation`); exactly
    one of the two. `kv_saved_share` (0..1, negative when a change caches more) is the KV cache the
    change saves at the evaluated length: T for blocks, the longest record for records.
    `sequences`: how many blocks or records it scored. Raises ValueError when neither or both are
    given.
    """
    from .data import tokenize_conversation
    from .evaluation import response_loss

    if (blocks is None) == (records is None):
        raise ValueError("span_cost scores on blocks or on records: give exactly one")
    with attention_span(model, spans):
        if records is not None:
            loss = response_loss(model, tokenizer, records, batch_size=1)["loss"]
            tokens = max(len(tokenize_conversation(tokenizer, r.messages)["input_ids"]) for r in records)
        else:
            loss, tokens = block_loss(model, blocks, from_position=window), blocks.shape[1]
    kinds = layer_kinds(model)
    return {"loss": loss, "tokens": tokens, "sequences": len(records) if records is not None else blocks.shape[0],
            "kv_saved_share": 1 - cached_tokens(kinds, window, tokens, spans) / cached_tokens(kinds, window, tokens)}


@torch.no_grad()
def cache_bytes(model, input_ids: torch.Tensor) -> int:
    """Bytes of the key/value cache transformers keeps after a prefill of `input_ids` [1, T]:
    the sum of every cached key and value tensor (a sliding layer's cache holds its window)."""
    out = model(input_ids=input_ids.to(next(model.parameters()).device), use_cache=True)
    total = 0
    for layer in out.past_key_values.layers:
        for tensor in (layer.keys, layer.values):
            total += tensor.numel() * tensor.element_size()
    return total


__all__ = ["FULL", "SLIDING", "AttentionStats", "attention_map", "attention_span", "attention_statistics",
           "block_loss", "cache_bytes", "cached_tokens", "decoder_layers", "eager_attention", "layer_kinds", "source_blocks",
           "span_cost", "spans_for", "visible_keys"]
