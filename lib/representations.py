"""Hidden-state drift: how far fine-tuning moved what each layer computes, base vs fine-tuned on
the same tokens.

Two measures, per layer, over every token of the records' conversations (prompt and reference
answer, teacher-forced, one record at a time so nothing is padded):
* cosine drift, 1 - mean cosine(h_base, h_tuned) over tokens: both models share the base's
  residual stream (the adapter only adds to it), so comparing the vectors themselves is meaningful;
* linear CKA (Kornblith et al. 2019, "Similarity of Neural Network Representations Revisited",
  ICML): ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) on column-centred [tokens x hidden] matrices, 1 for
  representations equal up to rotation and scale. It asks whether the geometry among tokens
  changed, which cosine alone cannot separate from a shared shift.
"""

from __future__ import annotations

import torch

from .data import Record, tokenize_conversation
from .evaluation import adapter_switch


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of two [n, d] representations of the same n items (float64 inside)."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{x.shape[0]} vs {y.shape[0]} rows: CKA compares the same items")
    x = x.double() - x.double().mean(0)
    y = y.double() - y.double().mean(0)
    cross = torch.linalg.norm(y.T @ x) ** 2
    return float(cross / (torch.linalg.norm(x.T @ x) * torch.linalg.norm(y.T @ y)))


@torch.no_grad()
def hidden_states(model, tokenizer, records: list[Record]) -> list[torch.Tensor]:
    """Per layer output (embedding output first), the tokens of all records stacked: a list of
    num_layers + 1 tensors [tokens, hidden], float32 on the CPU."""
    device = next(model.parameters()).device
    per_layer = None
    for record in records:
        ids = tokenize_conversation(tokenizer, record.messages)["input_ids"]
        out = model(input_ids=torch.tensor([ids], device=device), output_hidden_states=True, use_cache=False)
        states = [h[0].float().cpu() for h in out.hidden_states]
        per_layer = states if per_layer is None else [torch.cat([p, s]) for p, s in zip(per_layer, states)]
    return per_layer


def drift_by_layer(model, tokenizer, records: list[Record]) -> list[dict]:
    """Base (adapter off) vs fine-tuned (adapter on) hidden states of a peft model, per layer.

    Rows: layer (0 = embeddings), cosine_drift, linear_cka, tokens (over all `records`), records.
    """
    with adapter_switch(model, enabled=False):
        base = hidden_states(model, tokenizer, records)
    tuned = hidden_states(model, tokenizer, records)
    rows = []
    for layer, (x, y) in enumerate(zip(base, tuned)):
        cosine = torch.nn.functional.cosine_similarity(x.double(), y.double(), dim=-1).mean()
        rows.append({"layer": layer, "cosine_drift": float(1 - cosine), "linear_cka": linear_cka(x, y),
                     "tokens": x.shape[0], "records": len(records)})
    return rows
