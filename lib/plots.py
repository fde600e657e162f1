"""Every figure of the book, in one place. Each function returns the matplotlib Figure."""

from __future__ import annotations

import matplotlib.pyplot as plt


def token_length_histogram(lengths: dict[str, list[int]], max_seq_length: int):
    """Histogram of tokens per conversation, per split, with the max_seq_length cut marked."""
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for split, values in lengths.items():
        ax.hist(values, bins=40, alpha=0.55, label=f"{split} ({len(values)})")
    ax.axvline(max_seq_length, color="black", linestyle="--", label=f"max_seq_length = {max_seq_length}")
    ax.set(xlabel="tokens per conversation (chat template applied)", ylabel="conversations",
           title="Sequence lengths of the prepared splits")
    ax.legend()
    fig.tight_layout()
    return fig


def training_curves(log: list[dict], memory_label: str):
    """Loss and learning rate against step (left), memory in use against step (right)."""
    steps = [e["step"] for e in log if "loss" in e]
    fig, (ax_loss, ax_mem) = plt.subplots(1, 2, figsize=(10, 3.5))
    ax_loss.plot(steps, [e["loss"] for e in log if "loss" in e], marker=".", label="training loss")
    ax_loss.set(xlabel="optimizer step", ylabel="loss (nats/token, assistant tokens only)", title="Loss")
    ax_lr = ax_loss.twinx()
    ax_lr.plot(steps, [e.get("learning_rate", 0) for e in log if "loss" in e], color="gray", alpha=0.5)
    ax_lr.set_ylabel("learning rate", color="gray")
    ax_mem.plot(steps, [e.get("memory_gib", 0) for e in log if "loss" in e], color="tab:red", marker=".")
    ax_mem.set(xlabel="optimizer step", ylabel="GiB", title=f"Memory: {memory_label}")
    ax_mem.set_ylim(bottom=0)
    fig.tight_layout()
    return fig


def base_vs_finetuned(base: dict, tuned: dict):
    """Bars for each metric: base model vs fine-tuned, one panel per unit."""
    panels = [("loss", "response loss (nats/token, lower is better)"),
              ("parse_rate", "parses as Python (%)"),
              ("defines_function_rate", "defines the asked function (%)"),
              ("chrf", "chrF vs reference (0-100)")]
    panels = [(k, label) for k, label in panels if base.get(k) is not None]
    fig, axes = plt.subplots(1, len(panels), figsize=(3 * len(panels), 3.2))
    for ax, (key, label) in zip(axes, panels):
        values = [base[key], tuned[key]]
        bars = ax.bar(["base", "fine-tuned"], values, color=["tab:gray", "tab:green"])
        ax.bar_label(bars, fmt="%.2f" if key == "loss" else "%.1f")
        ax.set_title(label, fontsize=9)
        ax.set_ylim(0, max(values) * 1.2 or 1)
    fig.suptitle("Base vs fine-tuned on the held-out test split")
    fig.tight_layout()
    return fig
