"""How many bits a model can store: the capacity experiment of Morris et al. 2025, "How much do
language models memorize?" (arXiv 2505.24832), small enough for a CPU.

The data are uniformly random token sequences, so their information content is known exactly:
a sequence of L tokens drawn from V has H = L log2 V bits, and nothing in it can be generalised.
A model that assigns it negative log-likelihood NLL (in bits) has memorized max(0, H - NLL) of
them (the paper's definition with the uniform distribution as reference model). Summed over the
dataset this grows with dataset size until the model is full; the plateau is its capacity, and
capacity / parameters is bits per parameter (the paper: about 3.6 for GPT-style models, 3.51 in
bf16 and 3.83 in fp32).

Every sequence starts with a BOS token (id V) so that all L random tokens are predicted.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch
from transformers import get_cosine_schedule_with_warmup


@dataclass(frozen=True)
class TinyGemma3:
    """A small random-initialised Gemma 3 decoder for the capacity runs (vocabulary V + BOS)."""

    hidden_size: int = 32
    layers: int = 1
    heads: int = 2
    head_dim: int = 16
    vocab: int = 256

    def build(self, seed: int = 0):
        from transformers import Gemma3ForCausalLM, Gemma3TextConfig

        config = Gemma3TextConfig(
            hidden_size=self.hidden_size, intermediate_size=4 * self.hidden_size, num_hidden_layers=self.layers,
            num_attention_heads=self.heads, num_key_value_heads=1, head_dim=self.head_dim,
            vocab_size=self.vocab + 1, bos_token_id=self.vocab, pad_token_id=self.vocab, eos_token_id=self.vocab,
            sliding_window=64, max_position_embeddings=256, layer_types=["full_attention"] * self.layers,
            tie_word_embeddings=True)
        torch.manual_seed(seed)
        return Gemma3ForCausalLM(config).float()


def trainable_parameters(model) -> int:
    """Parameters that receive gradients: all of a full model (embedding counted once, it is tied
    to the head), only the adapter's of a peft model."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def random_sequences(count: int, length: int, alphabet: torch.Tensor | int, bos: int, seed: int) -> torch.Tensor:
    """[count, length + 1] int64: `bos`, then `length` tokens drawn uniformly from `alphabet` (a
    tensor of token ids, or an int V for ids 0..V-1)."""
    ids = torch.arange(alphabet) if isinstance(alphabet, int) else alphabet
    generator = torch.Generator().manual_seed(seed)
    tokens = ids[torch.randint(0, len(ids), (count, length), generator=generator)]
    return torch.cat([torch.full((count, 1), bos), tokens], dim=1)


@torch.no_grad()
def nll_bits(model, sequences: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Negative log-likelihood in bits of each sequence's tokens after BOS: [count] float64."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    totals = []
    for start in range(0, len(sequences), batch_size):
        batch = sequences[start:start + batch_size].to(device)
        logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch[:, 1:], reduction="none")
        totals.append(nll.sum(1).double().cpu() / math.log(2))
    model.train(was_training)
    return torch.cat(totals)


def memorized_bits(model, sequences: torch.Tensor, alphabet_size: int) -> float:
    """sum over sequences of max(0, H - NLL) in bits, H = length x log2(alphabet_size) each."""
    entropy = (sequences.shape[1] - 1) * math.log2(alphabet_size)
    return float((entropy - nll_bits(model, sequences)).clamp_min(0).sum())


@dataclass
class CapacityResult:
    """One training run on random sequences: sizes, the bits memorized, and whether it converged."""

    label: str
    parameters: int          # trainable
    sequences: int
    dataset_bits: float
    memorized_bits: float
    bits_per_parameter: float
    converged: bool          # memorized bits grew < 2% over the last quarter of the steps
    steps: int
    seconds: float
    curve: list[tuple[int, float]]  # (step, memorized bits) at the measured steps

    def to_dict(self) -> dict:
        return asdict(self)


def train_to_memorize(model, sequences: torch.Tensor, alphabet_size: int, steps: int, label: str = "",
                      learning_rate: float = 3e-3, batch_size: int = 128, measure_every: int | None = None,
                      seed: int = 0) -> CapacityResult:
    """Train `model`'s trainable parameters on `sequences` (AdamW without weight decay: decay
    would trade memorized bits for smaller weights; 5% linear warm-up, then cosine to 0) and measure what it
    memorized at every `measure_every` steps (default: a quarter of the run) and at the end."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=learning_rate, weight_decay=0.0, betas=(0.9, 0.98))
    schedule = get_cosine_schedule_with_warmup(optimizer, max(1, round(0.05 * steps)), steps)
    every = measure_every or max(1, steps // 4)
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    started, curve = time.monotonic(), [(0, memorized_bits(model, sequences, alphabet_size))]
    model.train()
    for step in range(1, steps + 1):
        pick = torch.randint(0, len(sequences), (min(batch_size, len(sequences)),), generator=generator)
        batch = sequences[pick].to(device)
        loss = model(input_ids=batch, labels=batch, use_cache=False).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % every == 0 or step == steps:
            curve.append((step, memorized_bits(model, sequences, alphabet_size)))
    seconds = time.monotonic() - started
    final = curve[-1][1]
    earlier = min((bits for step, bits in curve if step >= steps * 3 // 4), default=final)
    count = trainable_parameters(model)
    dataset_bits = len(sequences) * (sequences.shape[1] - 1) * math.log2(alphabet_size)
    return CapacityResult(label, count, len(sequences), dataset_bits, final, final / count,
                          final <= max(earlier, 1.0) * 1.02, steps, round(seconds, 1), curve)


def capacity_by_model(results: list[CapacityResult]) -> dict[int, float]:
    """{trainable parameters: capacity}, capacity = the most bits memorized over its datasets."""
    capacity: dict[int, float] = {}
    for r in results:
        capacity[r.parameters] = max(capacity.get(r.parameters, 0.0), r.memorized_bits)
    return capacity


def fit_bits_per_parameter(results: list[CapacityResult]) -> float:
    """Least-squares slope through the origin of capacity against trainable parameters."""
    capacity = capacity_by_model(results)
    return sum(x * y for x, y in capacity.items()) / sum(x * x for x in capacity)
