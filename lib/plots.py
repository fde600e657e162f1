"""Every figure of the book, in one place. Each function returns the matplotlib Figure."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np


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


def base_vs_finetuned(models: dict[str, dict]):
    """Bars for each metric, one bar per model ({name: metrics of lib.evaluation}), one panel per
    metric: the loss, what the generations look like, and what they get right."""
    panels = [("loss", "response loss\n(nats/token, lower is better)"), ("parse_rate", "parses as Python (%)"),
              ("defines_function_rate", "defines the asked\nfunction (%)"), ("names_resolve_rate", "its names\nresolve (%)"),
              ("repeated_line_rate", "repeats a line 3+ times\n(%, lower is better)"),
              ("stopped_rate", "stops by itself (%)"), ("clean_rate", "clean: all of those (%)")]
    panels = [(k, label) for k, label in panels if any(m.get(k) is not None for m in models.values())]
    colors = ["tab:gray", "tab:green", "tab:blue", "tab:orange"]
    fig, axes = plt.subplots(1, len(panels), figsize=(2.3 * len(panels), 3.4))
    for ax, (key, label) in zip(np.atleast_1d(axes), panels):
        values = [m.get(key) or 0.0 for m in models.values()]
        bars = ax.bar(range(len(values)), values, color=colors[:len(values)])
        ax.bar_label(bars, fmt="%.2f" if key == "loss" else "%.0f", fontsize=7)
        ax.set_xticks(range(len(values)), [name.replace(", ", ",\n") for name in models], fontsize=6)
        ax.set_title(label, fontsize=8)
        ax.set_ylim(0, max(values) * 1.25 or 1)
    fig.suptitle("Base vs fine-tuned on the held-out test split")
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------ 01_concepts

def quantization_errors(errors):
    """Grouped bars: relative Frobenius error per projection type (rows) and method (columns).

    errors: a DataFrame indexed by module with one column per method.
    """
    fig, ax = plt.subplots(figsize=(8, 3.2))
    errors.plot.bar(ax=ax, rot=0, width=0.8)
    ax.set(ylabel="||W - W_hat||_F / ||W||_F", xlabel="", title="4-bit round-trip error on Gemma 3 270M weights")
    ax.legend(title="method")
    fig.tight_layout()
    return fig


def normalized_weight_histogram(values, levels, title: str):
    """Histogram of block-normalized weights (values / block absmax) with the 4-bit code's levels."""
    fig, ax = plt.subplots(figsize=(8, 3.2))
    ax.hist(values.numpy(), bins=200, color="tab:blue", alpha=0.7, density=True)
    for level in levels.tolist():
        ax.axvline(level, color="tab:red", linewidth=0.8)
    ax.set(xlabel="weight / absmax of its block of 64", ylabel="density", title=title)
    fig.tight_layout()
    return fig


def rank_sweep_curves(results: list[dict], smooth: int = 4):
    """Training loss against step for each rank: alpha/r (left) and alpha/sqrt(r) (right).

    Thin lines: each step's loss (same batches in every run); thick: moving average over `smooth`.
    """
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), sharey=True)
    colors = plt.cm.viridis(np.linspace(0, 0.9, len({r["run"]["rank"] for r in results})))
    ranks = sorted({r["run"]["rank"] for r in results})
    for ax, rslora in zip(axes, (False, True)):
        for result in (r for r in results if r["run"]["use_rslora"] == rslora and not r["run"]["use_dora"]):
            color = colors[ranks.index(result["run"]["rank"])]
            losses = np.array([e["loss"] for e in result["log"]])
            steps = np.arange(1, len(losses) + 1)
            ax.plot(steps, losses, color=color, alpha=0.25, linewidth=0.8)
            window = min(smooth, len(losses))
            smoothed = np.convolve(losses, np.ones(window) / window, mode="valid")
            ax.plot(steps[window - 1:], smoothed, color=color, linewidth=2,
                    label=f"r={result['run']['rank']} (s={result['peft_scaling']:.3g})")
        ax.set(xlabel="optimizer step", title="rsLoRA: s = alpha/sqrt(r)" if rslora else "LoRA: s = alpha/r")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("training loss (nats/token)")
    fig.tight_layout()
    return fig


def update_norm_by_rank(results: list[dict]):
    """Mean relative weight update ||W' - W|| / ||W|| at the end of each run, against rank."""
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for rslora, label in ((False, "LoRA (alpha/r)"), (True, "rsLoRA (alpha/sqrt(r))")):
        runs = sorted((r for r in results if r["run"]["use_rslora"] == rslora and not r["run"]["use_dora"]),
                      key=lambda r: r["run"]["rank"])
        means = [sum(u["relative_update"] for u in r["update_norms"]) / len(r["update_norms"]) for r in runs]
        ax.plot([r["run"]["rank"] for r in runs], means, marker="o", label=label)
    ax.set(xscale="log", yscale="log", xlabel="rank r", ylabel="mean ||W' - W||_F / ||W||_F",
           title="How far the adapter moved the weights")
    ax.set_xticks([r["run"]["rank"] for r in results], labels=[str(r["run"]["rank"]) for r in results])
    ax.minorticks_off()
    ax.legend()
    fig.tight_layout()
    return fig


def magnitude_vs_direction(panels: dict[str, tuple[list[dict], float]]):
    """The DoRA paper's Figure 2: Delta M against Delta D, one point per (layer, step), per run.

    panels: {title: (rows with step/delta_magnitude/delta_direction, correlation across layers at the
    last step)}.
    """
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.6))
    for ax, (title, (rows, correlation)) in zip(axes, panels.items()):
        scatter = ax.scatter([r["delta_direction"] for r in rows], [r["delta_magnitude"] for r in rows],
                             c=[r["step"] for r in rows], cmap="viridis", s=14)
        ax.set(xlabel="Delta D (mean 1 - cos)", ylabel="Delta M (mean |m - m0|)",
               title=f"{title}\nlast step: correlation across layers {correlation:+.2f}")
        ax.ticklabel_format(style="sci", scilimits=(-2, 2))
        fig.colorbar(scatter, ax=ax, label="step")
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------ 07_export

def export_comparison(table):
    """Per exported artifact: file size, test perplexity and seconds per response, side by side.

    table: a DataFrame indexed by artifact with columns file_mib, perplexity, seconds_per_response.
    """
    panels = [("file_mib", "file size (MiB)"), ("perplexity", "test perplexity (lower is better)"),
              ("seconds_per_response", "seconds per response (llama.cpp)")]
    fig, axes = plt.subplots(1, len(panels), figsize=(12, 3.4))
    for ax, (column, title) in zip(axes, panels):
        values = table[column].dropna()
        bars = ax.bar(values.index, values.values, color="tab:blue")
        ax.bar_label(bars, fmt="%.3g")
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="x", rotation=20)
        ax.set_ylim(0, values.max() * 1.2 if len(values) else 1)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------ 02_memory_budget, 05_oom_ladder

TERM_COLORS = {"weights": "tab:gray", "adapter": "tab:blue", "gradients": "tab:cyan", "optimizer": "tab:purple",
               "activations": "tab:orange", "logits": "tab:red", "overhead": "tab:olive"}


def memory_breakdown(estimates: dict, gpus: dict[str, float] | None = None):
    """Stacked horizontal bars, one per label, of a `lib.memory.MemoryEstimate`'s terms (GiB);
    vertical lines at each GPU's memory (`gpus`: {name: GiB})."""
    fig, ax = plt.subplots(figsize=(10, 0.55 * len(estimates) + 1.4))
    labels = list(estimates)
    for i, label in enumerate(labels):
        left = 0.0
        for term, color in TERM_COLORS.items():
            value = getattr(estimates[label], term)
            ax.barh(i, value, left=left, color=color, label=term if i == 0 else None)
            left += value
        ax.text(left + 0.2, i, f"{left:.1f}", va="center", fontsize=8)
    for name, gib in (gpus or {}).items():
        ax.axvline(gib, color="black", linestyle=":", linewidth=1)
        ax.text(gib, len(labels) - 0.4, f" {name}", fontsize=8, rotation=90, va="top")
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    ax.set_xlabel("GiB at the peak (estimate)")
    ax.legend(ncol=4, fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def estimate_vs_measured(panels: dict):
    """One scatter per panel ({title: DataFrame with measured_gib, estimated_gib, backend}): the
    estimate against the measured peak, with y = x and a +-10% band."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.6), squeeze=False)
    for ax, (title, table) in zip(axes[0], panels.items()):
        top = max(table["measured_gib"].max(), table["estimated_gib"].max()) * 1.08
        line = np.linspace(0, top, 50)
        ax.fill_between(line, line * 0.9, line * 1.1, color="0.9", label="within 10%")
        ax.plot(line, line, color="0.5", linewidth=1)
        for backend, marker in (("unsloth", "o"), ("peft", "s")):
            part = table[table["backend"] == backend]
            ax.scatter(part["measured_gib"], part["estimated_gib"], marker=marker, s=22, label=backend)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("measured peak allocated (GiB, H200)")
        ax.set_ylabel("estimated (GiB)")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def ladder_attempts(scenarios: list[dict]):
    """Per scenario, each rung's predicted peak and measured peak (GiB) against the allocator cap; OOM marked."""
    fig, axes = plt.subplots(1, len(scenarios), figsize=(4.6 * len(scenarios), 3.8), squeeze=False)
    for ax, scenario in zip(axes[0], scenarios):
        attempts = scenario["attempts"]
        x = np.arange(len(attempts))
        ax.bar(x - 0.2, [a["predicted_peak_gib"] for a in attempts], 0.4, color="0.7", label="predicted")
        measured = [a["measured_peak_gib"] or 0 for a in attempts]
        ax.bar(x + 0.2, measured, 0.4, color="tab:green", label="measured")
        for i, a in enumerate(attempts):
            if a["outcome"] != "ok":
                ax.text(i + 0.2, 0.5, "OOM" if a["outcome"] == "oom" else "skipped", rotation=90, fontsize=8,
                        color="tab:red" if a["outcome"] == "oom" else "0.4", ha="center")
        ax.axhline(scenario["allocator_cap_gib"], color="tab:red", linestyle="--", linewidth=1, label="T4 cap")
        ax.set_xticks(x, [a["rung"] for a in attempts], rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("peak allocated (GiB)")
        ax.set_title(scenario["scenario"], fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def screens_beside_ddl(pairs: list[tuple[str, str, str]], max_aspect: float = 0.8):
    """One row per (title, screenshot path, DDL): the screenshot left (its top, at most
    `max_aspect` times as high as wide), its true DDL right. Rows are as high as their screenshot."""
    from PIL import Image, ImageChops

    crops = []
    for _, path, _ in pairs:
        with Image.open(path) as screen:
            screen = screen.convert("RGB")
        # Full-page screenshots are at least a viewport high: cut the empty page background below.
        background = Image.new("RGB", screen.size, screen.getpixel((screen.width - 1, screen.height - 1)))
        content = ImageChops.difference(screen, background).getbbox() or (0, 0, screen.width, screen.height)
        bottom = min(content[3] + 16, screen.height, int(screen.width * max_aspect))
        crops.append(screen.crop((0, 0, screen.width, bottom)))
    heights = [max(crop.height / crop.width, 0.3) for crop in crops]
    fig, axes = plt.subplots(len(pairs), 2, figsize=(13, 6.5 * sum(heights) + 0.4 * len(pairs)), squeeze=False,
                             gridspec_kw={"width_ratios": [1.1, 1], "height_ratios": heights})
    for (ax_image, ax_text), (title, _, ddl), crop in zip(axes, pairs, crops):
        ax_image.imshow(crop)
        ax_image.set_title(title, fontsize=10, loc="left")
        ax_text.text(0.02, 1, ddl, family="monospace", fontsize=8.5, va="top", transform=ax_text.transAxes)
        for ax in (ax_image, ax_text):
            ax.axis("off")
    fig.tight_layout()
    return fig


def schema_scores(models: dict[str, dict], target_parse_rate: float | None = None):
    """Grouped bars of `lib.sql_eval.aggregate` metrics (0-1) per model; a dashed line at the
    target syntactic-validity rate if given."""
    metrics = ["parses", "executes", "table_f1", "column_f1", "type_accuracy", "primary_key_f1", "foreign_key_f1"]
    x = np.arange(len(metrics))
    width = 0.8 / len(models)
    fig, ax = plt.subplots(figsize=(10, 3.6))
    for i, (name, scores) in enumerate(models.items()):
        values = [scores[m] if scores[m] is not None else 0.0 for m in metrics]
        bars = ax.bar(x + (i - (len(models) - 1) / 2) * width, values, width, label=name)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    if target_parse_rate is not None:
        ax.axhline(target_parse_rate, color="grey", ls="--", lw=1, label=f"source target: {target_parse_rate:.0%} parse")
    ax.set_xticks(x, [m.replace("_", " ") for m in metrics], fontsize=9)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("mean over test screens")
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    return fig


def ocr_reading(image_path, boxes, read_text: str, dom_text: str):
    """A screenshot with OCR's word boxes drawn on it (left) beside what layout analysis rebuilt
    from them and the page's own DOM text (right), for one screen."""
    from PIL import Image

    image = np.asarray(Image.open(image_path).convert("RGB"))
    height = min(image.shape[0], 700)
    fig, (ax_image, ax_text) = plt.subplots(1, 2, figsize=(13, 5.2), gridspec_kw={"width_ratios": [1.25, 1]})
    ax_image.imshow(image[:height])
    for box in boxes:
        if box.y0 < height:
            ax_image.add_patch(plt.Rectangle((box.x0, box.y0), box.x1 - box.x0, box.y1 - box.y0, fill=False,
                                             edgecolor="tab:red", linewidth=0.8))
    ax_image.set_title(f"{len(boxes)} words found by OCR", fontsize=10)
    ax_image.axis("off")
    ax_text.axis("off")
    clip = lambda text: "\n".join(line[:64] for line in text.splitlines()[:16])  # noqa: E731
    ax_text.text(0, 1, "from the pixels (OCR + layout):\n" + clip(read_text), va="top", family="monospace",
                 fontsize=7.5, transform=ax_text.transAxes)
    ax_text.text(0, 0.45, "from the page's DOM:\n" + clip(dom_text), va="top", family="monospace", fontsize=7.5,
                 color="dimgray", transform=ax_text.transAxes)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------ chapter 09: inside Gemma 3

LAYER_COLORS = {"sliding_attention": "tab:blue", "full_attention": "tab:orange"}


def layer_pattern(stacks: dict[str, list[str]], windows: dict[str, int]):
    """One row of bars per model: each decoder layer coloured by its attention kind."""
    fig, ax = plt.subplots(figsize=(10, 0.55 * len(stacks) + 1.2))
    for row, (name, kinds) in enumerate(stacks.items()):
        for i, kind in enumerate(kinds):
            ax.barh(row, 1, left=i, color=LAYER_COLORS[kind], edgecolor="white")
        ax.text(len(kinds) + 0.5, row, f"{kinds.count('full_attention')} global, {kinds.count('sliding_attention')} "
                f"local (window {windows[name]:,})", va="center", fontsize=8)
    ax.set_yticks(range(len(stacks)), list(stacks))
    ax.set(xlabel="decoder layer", title="Gemma 3's stack: sliding-window (blue) and global (orange) layers")
    ax.set_xlim(0, max(len(k) for k in stacks.values()) + 22)
    ax.invert_yaxis()
    fig.tight_layout()
    return fig


def kv_cache_by_context(table):
    """KV-cache GiB against context length per model, real pattern (solid) vs all-global (dashed).

    table: rows with model, tokens, pattern_gib, all_global_gib."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (model, rows) in enumerate(table.groupby("model", sort=False)):
        color = f"C{i}"
        ax.plot(rows["tokens"], rows["all_global_gib"], "--", color=color)
        ax.plot(rows["tokens"], rows["pattern_gib"], "-o", color=color, label=model)
    ax.set(xscale="log", yscale="log", xlabel="context (tokens)", ylabel="KV cache, one sequence (GiB, bf16)",
           title="KV cache: 5 local : 1 global (solid) vs all global (dashed)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def attention_maps(maps: dict[str, "np.ndarray"], window: int):
    """Head-averaged attention probabilities, one panel per layer (log colour scale)."""
    from matplotlib.colors import LogNorm

    fig, axes = plt.subplots(1, len(maps), figsize=(4.2 * len(maps), 4))
    for ax, (title, probabilities) in zip(np.atleast_1d(axes), maps.items()):
        image = ax.imshow(np.asarray(probabilities) + 1e-6, norm=LogNorm(vmin=1e-4, vmax=1), cmap="magma")
        ax.set(title=title, xlabel="key position", ylabel="query position")
    fig.colorbar(image, ax=axes, shrink=0.8, label="attention probability")
    fig.suptitle(f"Attention on a real prompt (sliding window {window} tokens)")
    return fig


def attention_by_layer(table):
    """Mean attention distance and entropy per layer, one line per context length, global layers
    marked. table: rows with layer, kind, tokens, mean_distance, entropy_bits."""
    fig, (ax_d, ax_e) = plt.subplots(1, 2, figsize=(11, 3.8))
    for tokens, rows in table.groupby("tokens"):
        ax_d.plot(rows["layer"], rows["mean_distance"], marker=".", label=f"{tokens:,} tokens")
        ax_e.plot(rows["layer"], rows["entropy_bits"], marker=".", label=f"{tokens:,} tokens")
    for ax in (ax_d, ax_e):
        for layer in table.loc[table["kind"] == "full_attention", "layer"].unique():
            ax.axvspan(layer - 0.4, layer + 0.4, color=LAYER_COLORS["full_attention"], alpha=0.2)
        ax.set_xlabel("decoder layer (orange: global)")
    ax_d.set(ylabel="mean attention distance (tokens)", yscale="log", title="How far each layer looks")
    ax_e.set(ylabel="attention entropy (bits)", title="How spread its attention is")
    ax_d.legend(fontsize=8)
    fig.tight_layout()
    return fig


def span_tradeoff(table):
    """Loss change against KV cache saved for each attention-span change. table: rows with change,
    kv_saved_share (0..1, negative = more cache), loss_delta (nats/token), evaluated_on."""
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for i, (where, rows) in enumerate(table.groupby("evaluated_on", sort=False)):
        ax.scatter(100 * rows["kv_saved_share"], rows["loss_delta"], color=f"C{i}", label=where)
        for _, row in rows.iterrows():
            ax.annotate(row["change"], (100 * row["kv_saved_share"], row["loss_delta"]), fontsize=7,
                        xytext=(4, 3), textcoords="offset points")
    ax.axhline(0, color="gray", linewidth=0.8)
    ax.set(xlabel="KV cache saved vs the real pattern (%; negative = more)", ylabel="loss change (nats/token)",
           title="What a layer's span is worth")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def layer_module_heatmaps(table, columns: dict[str, str]):
    """One heatmap per column of an update table (layer x module). columns: {column: title}."""
    modules = list(dict.fromkeys(table["module"]))
    fig, axes = plt.subplots(1, len(columns), figsize=(4.6 * len(columns), 4.2))
    for ax, (column, title) in zip(np.atleast_1d(axes), columns.items()):
        grid = table.pivot(index="layer", columns="module", values=column)[modules]
        image = ax.imshow(grid.values, aspect="auto", cmap="viridis")
        ax.set_xticks(range(len(modules)), modules, rotation=45, ha="right", fontsize=8)
        ax.set(title=title, ylabel="decoder layer")
        fig.colorbar(image, ax=ax, shrink=0.8)
    fig.tight_layout()
    return fig


def singular_value_spectra(spectra: dict[str, "np.ndarray"]):
    """Normalised singular values sigma_i / sigma_1 of a few updates, log scale."""
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for label, values in spectra.items():
        values = np.asarray(values)
        ax.plot(np.arange(1, len(values) + 1), values / values[0], marker=".", label=label)
    ax.set(yscale="log", xlabel="singular value index", ylabel="sigma_i / sigma_1",
           title="Spectra of the learned updates s·B·A")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def drift_by_layer(rows: list[dict], kinds: list[str]):
    """Cosine drift and 1 - linear CKA per layer (layer 0 = embeddings)."""
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    layers = [r["layer"] for r in rows]
    ax.plot(layers, [r["cosine_drift"] for r in rows], marker=".", label="1 - cosine (same token)")
    ax.plot(layers, [1 - r["linear_cka"] for r in rows], marker=".", label="1 - linear CKA")
    for i, kind in enumerate(kinds, start=1):
        if kind == "full_attention":
            ax.axvspan(i - 0.4, i + 0.4, color=LAYER_COLORS[kind], alpha=0.2)
    ax.set(xlabel="output of decoder layer (0 = embeddings; orange: global)", ylabel="drift",
           title="Hidden-state drift, base vs fine-tuned, on test conversations")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def gradient_norms_by_layer(records: list[dict]):
    """Per-layer gradient norm against step (heatmap, layers on y)."""
    layers = sorted({layer for r in records for layer in r["norms"] if layer >= 0})
    grid = np.array([[r["norms"].get(layer, np.nan) for r in records] for layer in layers])
    fig, ax = plt.subplots(figsize=(8, 4))
    image = ax.imshow(grid, aspect="auto", cmap="viridis", origin="lower",
                      extent=(records[0]["step"] - 0.5, records[-1]["step"] + 0.5, layers[0] - 0.5, layers[-1] + 0.5))
    fig.colorbar(image, ax=ax, label="gradient L2 norm of the layer's adapter")
    ax.set(xlabel="optimizer step", ylabel="decoder layer", title="Gradient flow during fine-tuning")
    fig.tight_layout()
    return fig


def held_out_curves(rows: list[dict]):
    """Response loss of each record set against step."""
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for name in [k for k in rows[0] if k != "step"]:
        ax.plot([r["step"] for r in rows], [r[name] for r in rows], marker=".", label=name)
    ax.set(xlabel="optimizer step", ylabel="response loss (nats/token)", title="Train vs held-out loss")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def capacity_curves(results: list, fitted: float, paper: float = 3.6):
    """Memorized bits against dataset bits per model (left); capacity against parameters (right)."""
    fig, (ax_m, ax_c) = plt.subplots(1, 2, figsize=(11, 4))
    by_label: dict[str, list] = {}
    for r in results:
        by_label.setdefault(r.label, []).append(r)
    for label, runs in by_label.items():
        runs = sorted(runs, key=lambda r: r.dataset_bits)
        ax_m.plot([r.dataset_bits for r in runs], [r.memorized_bits for r in runs], marker="o", label=label)
    top = max(r.dataset_bits for r in results)
    ax_m.plot([0, top], [0, top], ":", color="gray", label="memorized everything")
    ax_m.set(xlabel="bits in the dataset", ylabel="bits memorized", title="Memorization saturates")
    ax_m.legend(fontsize=7)
    capacity: dict[int, float] = {}
    for r in results:
        capacity[r.parameters] = max(capacity.get(r.parameters, 0.0), r.memorized_bits)
    xs = np.array(sorted(capacity))
    ax_c.scatter(xs, [capacity[x] for x in xs], color="black", zorder=3, label="measured capacity")
    ax_c.plot(xs, fitted * xs, label=f"fit: {fitted:.2f} bits/parameter")
    ax_c.plot(xs, paper * xs, "--", label=f"Morris et al. 2025: {paper} bits/parameter")
    ax_c.set(xlabel="trainable parameters", ylabel="capacity (bits)", title="Capacity vs parameters")
    ax_c.legend(fontsize=7)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------ chapter 10: beyond LoRA

def loss_curves(logs: dict[str, list[dict]], smooth: int = 4, title: str = "Training loss"):
    """Training loss against step, one line per run (moving average over `smooth` steps; the raw
    steps faint behind)."""
    fig, ax = plt.subplots(figsize=(8, 3.8))
    for i, (name, log) in enumerate(logs.items()):
        losses = np.array([e["loss"] for e in log if "loss" in e])
        steps = np.arange(1, len(losses) + 1)
        window = min(smooth, len(losses))
        ax.plot(steps, losses, color=f"C{i}", alpha=0.2, linewidth=0.8)
        ax.plot(steps[window - 1:], np.convolve(losses, np.ones(window) / window, mode="valid"), color=f"C{i}",
                linewidth=2, label=name)
    ax.set(xlabel="optimizer step", ylabel="training loss (nats/token)", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def accumulated_rank(series: dict[str, list[tuple[int, float]]], references: dict[str, float]):
    """Effective rank of the accumulated update against step, one line per merging run ({name:
    [(step, rank)]}), and each plain LoRA run's final effective rank as a dashed line."""
    fig, ax = plt.subplots(figsize=(8, 3.8))
    for i, (name, points) in enumerate(series.items()):
        if points:
            steps, ranks = zip(*points)
            ax.plot(steps, ranks, marker="o", markersize=3, color=f"C{i}", label=name)
    for j, (name, rank) in enumerate(references.items()):
        ax.axhline(rank, linestyle="--", color=f"C{len(series) + j}", linewidth=1, label=f"{name} (final)")
    ax.set(xlabel="optimizer step (at each merge)", ylabel="effective rank of W - W_0",
           title="How the merged updates add up (layer 0, mean of q_proj and down_proj)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def blend_tradeoff(table):
    """Code-task loss against SQL-task loss for every blend, one line per method (w annotated)."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for i, (method, rows) in enumerate(table.groupby("method", sort=False)):
        rows = rows.sort_values("w")
        marker = "*" if len(rows) == 1 else "o"
        ax.plot(rows["code loss"], rows["SQL loss"], marker=marker, markersize=10 if marker == "*" else 5,
                color=f"C{i}", label=method)
        for _, row in rows.iterrows():
            ax.annotate(f"{row['w']:g}", (row["code loss"], row["SQL loss"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
    ax.set(xlabel="code task: response loss (nats/token)", ylabel="SQL task: response loss (nats/token)",
           title="Blends of the code and SQL adapters (w = weight of the code adapter)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
