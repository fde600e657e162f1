"""Response-only loss without the full logits: the output head applied to the response tokens only,
a chunk of rows at a time.

Gemma 3's vocabulary has 262,144 entries, so a causal LM's logits are the largest tensors of a
training step: for a batch of 4 x 384 tokens they take 1.5 GiB in float32, and the softmax and its
gradient need the same again, twice. Under response-only loss most of those rows carry no loss
(label -100). This loss keeps only the rows that do and runs the head and cross-entropy over them
`chunk_tokens` rows at a time under activation checkpointing, so one chunk's logits are alive at
once (recomputed in backward). The result is the same loss and the same gradients as the model's
own (`tests/test_loss.py`); the idea is that of Cut Cross-Entropy (Wijmans et al. 2024,
arXiv:2411.09009) and unsloth's chunked loss, written in plain torch.

Used by `lib.training` on a CPU, where neither backend chunks Gemma 3's loss (unsloth's CPU
fallback does it for a few model types, not Gemma 3); on a GPU unsloth has its own fused loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100


def causal_lm_parts(model):
    """(decoder, output head, final-logit softcap or None) of a causal LM, through a peft wrapper.

    The decoder returns the final hidden states (after the last norm); logits = head(hidden),
    soft-capped as `cap * tanh(logits / cap)` when the config sets `final_logit_softcapping`.
    Returns None for a model that is not a plain decoder + linear head (a vision-language model,
    a head with a bias), whose own loss is then used.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not type(base).__name__.endswith("ForCausalLM"):
        return None
    decoder, head = getattr(base, "model", None), base.get_output_embeddings()
    if decoder is None or not isinstance(head, torch.nn.Linear) or head.bias is not None:
        return None
    return decoder, head, getattr(base.config, "final_logit_softcapping", None)


def _chunk_loss_sum(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, softcap) -> torch.Tensor:
    logits = (hidden @ weight.T).float()
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    return F.cross_entropy(logits, labels, reduction="sum")


def chunked_cross_entropy(hidden: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, chunk_tokens: int,
                          softcap: float | None = None, num_items: int | torch.Tensor | None = None) -> torch.Tensor:
    """Next-token cross-entropy (nats/token) of hidden states through an output head, by chunks.

    hidden: (batch, seq, d) final hidden states; labels: (batch, seq) token ids, IGNORE_INDEX where
    no loss; weight: (vocab, d) the head. Position t predicts labels[t + 1] (the causal shift, as
    transformers' ForCausalLMLoss). The sum over labelled tokens is divided by `num_items` (the
    Trainer's count across gradient-accumulation steps) or, if None, by their count here. Raises
    ValueError when chunk_tokens < 1 or shapes disagree.
    """
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    if hidden.shape[:2] != labels.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} and labels {tuple(labels.shape)} disagree on (batch, seq)")
    shifted = labels[:, 1:].reshape(-1).to(hidden.device)
    keep = (shifted != IGNORE_INDEX).nonzero().squeeze(-1)
    rows, targets = hidden[:, :-1].reshape(-1, hidden.shape[-1]).index_select(0, keep), shifted.index_select(0, keep)
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, len(targets), chunk_tokens):
        part = slice(start, start + chunk_tokens)
        total = total + checkpoint(_chunk_loss_sum, rows[part], weight, targets[part], softcap, use_reentrant=False)
    count = len(targets) if num_items is None else num_items
    return total / count


def response_only_loss(model, inputs: dict, chunk_tokens: int, num_items=None) -> torch.Tensor | None:
    """The loss of `model` on a batch with `labels`, computed by `chunked_cross_entropy`.

    Returns None when the model is not a plain causal LM (`causal_lm_parts`); the caller then
    uses the model's own loss.
    """
    parts = causal_lm_parts(model)
    if parts is None:
        return None
    decoder, head, softcap = parts
    features = {k: v for k, v in inputs.items() if k not in ("labels", "num_items_in_batch")}
    hidden = decoder(**features, use_cache=False).last_hidden_state
    return chunked_cross_entropy(hidden, inputs["labels"], head.weight, chunk_tokens, softcap, num_items)
