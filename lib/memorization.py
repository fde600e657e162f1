"""Memorization vs generalization during fine-tuning: held-out loss over steps, and a membership
test on the finished model.

* `HeldOutLossCallback` measures the response loss (`lib.evaluation.response_loss`) of named record
  sets (train subset, validation, test) every k steps; a train loss that keeps falling while the
  held-out loss stalls or rises is memorization.
* The loss-threshold membership-inference attack (Yeom et al. 2018, "Privacy Risk in Machine
  Learning", CSF; arXiv 1709.01604): guess "was in the training set" when a record's loss is below
  a threshold. Its AUC over all thresholds is the probability that a random member has a lower loss
  than a random non-member (the Mann-Whitney U statistic / (m n)): 0.5 = the model does not tell
  them apart, 1.0 = every member is recognisable.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import TrainerCallback

from .artifacts import read_jsonl
from .data import Record
from .evaluation import response_loss


def record_losses(model, tokenizer, records: list[Record]) -> list[float]:
    """Mean response loss (nats/token) of each record on its own, in order."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        losses = [response_loss(model, tokenizer, [record], batch_size=1)["loss"] for record in records]
    model.train(was_training)
    return losses


def membership_auc(member_losses: list[float], non_member_losses: list[float]) -> float:
    """P(a member's loss < a non-member's loss), ties counting one half (the attack's ROC AUC)."""
    if not member_losses or not non_member_losses:
        raise ValueError("membership AUC needs at least one member and one non-member")
    wins = sum((m < n) + 0.5 * (m == n) for m in member_losses for n in non_member_losses)
    return wins / (len(member_losses) * len(non_member_losses))


def membership_inference(model, tokenizer, members: list[Record], non_members: list[Record]) -> dict:
    """The loss-threshold attack on `model`: {'auc', 'member_loss', 'non_member_loss', 'members',
    'non_members'} (mean losses in nats/token)."""
    inside, outside = record_losses(model, tokenizer, members), record_losses(model, tokenizer, non_members)
    return {"auc": membership_auc(inside, outside), "member_loss": sum(inside) / len(inside),
            "non_member_loss": sum(outside) / len(outside), "members": len(inside), "non_members": len(outside)}


class HeldOutLossCallback(TrainerCallback):
    """Response loss of each named record set before training and every `every` steps, appended to
    <run>/held-out-loss.jsonl as {"step", "<name>": loss, ...}."""

    def __init__(self, run_dir: str | Path, tokenizer, sets: dict[str, list[Record]], every: int):
        if every < 1:
            raise ValueError(f"every must be >= 1 step, got {every}")
        self.path = Path(run_dir) / "held-out-loss.jsonl"
        self.tokenizer, self.sets, self.every = tokenizer, sets, every

    def _measure(self, model, step: int) -> None:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            row = {"step": step, **{name: response_loss(model, self.tokenizer, records)["loss"]
                                    for name, records in self.sets.items()}}
        model.train(was_training)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step == 0:
            self._measure(model, 0)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0:
            self._measure(model, state.global_step)


def read_held_out_loss(run_dir: str | Path) -> list[dict]:
    """The rows HeldOutLossCallback wrote, in order; a torn last line (a killed run) is left out, a
    bad line elsewhere raises ValueError naming file:line."""
    return read_jsonl(Path(run_dir) / "held-out-loss.jsonl", torn_tail_ok=True)
