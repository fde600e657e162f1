# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 2. Memory budget: where the GiB go, estimated and measured
#
# The source documents promise that Gemma 3 12B with the Trinity at 4096 tokens fits a 16 GB T4
# at "15.6 GB". This chapter replaces that promise with an estimator (`lib.memory`) whose every
# term is either counted exactly from the model's shapes or fitted to measurements, and checks
# it against 93 training steps measured on a GPU.
#
# One training step holds, at its peak:
#
# * **weights**: the frozen base. NF4 stores the 7 projections of each layer in 4.127 bits per
#   weight with double quantization; the embedding (262k × hidden, tied to the output head) stays
#   in 16 bits, and in 32 bits under peft's `prepare_model_for_kbit_training`.
# * **adapter**, **gradients**, **optimizer**: 4 bytes per trainable parameter each for the
#   adapter and its gradients; AdamW's two moments take 8 bytes, 8-bit AdamW about 2.
# * **activations**: what the backward pass needs. Gradient checkpointing keeps only each
#   layer's input and recomputes one layer at a time; unsloth offloads even those to CPU RAM.
# * **logits**: the loss over 262,144 vocabulary entries per token. Computed in full, that is
#   about 12 bytes per entry (bf16 logits, their fp32 copy, softmax and gradient): 3 GiB per
#   1,000 tokens, more than the 12B model's LoRA adapter. A chunked loss keeps a fixed workspace.
# * **overhead**: the allocator's slack (reserved but not allocated) and the CUDA context.
#
# The peak happens at one of two moments: at the loss (logits alive, gradients not yet) or in the
# backward pass (gradients and a recomputed layer alive). The estimator computes both and keeps
# the larger, and says which.

# %% tags=["parameters"]
model_name = "gemma-3-270m"      # the model measured on this machine (exact terms)
run_name = "default"
output_dir = "output"
sizes = ["270M", "1B", "4B", "12B", "27B"]
max_seq_length = 4096            # the Trinity setting the tables below use
rank = 64
gpus = ["T4", "L4", "A10G", "A100-40GB", "A100-80GB", "H100-80GB"]
measurements = "data/measurements/gpu-memory-grid.json"
course_repo = "https://github.com/gemma-trinity/gemma3-trinity-course.git"  # Colab

# %% tags=["hide-input"]
# Setup: on Colab, clone the course and install its stack; locally, run from the repository root.
import os, subprocess, sys
from pathlib import Path

if "google.colab" in sys.modules and not Path("lib").is_dir():
    course = Path.cwd() / "course"  # /content/course on Colab
    if not course.is_dir():
        subprocess.run(["git", "clone", "--depth", "1", course_repo, str(course)], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-r", str(course / "requirements.txt")], check=True)
    os.chdir(course)
os.chdir(next(p for p in [Path.cwd(), *Path.cwd().parents] if (p / "lib").is_dir()))
sys.path.insert(0, os.getcwd())

from lib.environment import quiet_library_logs

quiet_library_logs()

# %%
import pandas as pd
from lib import memory, plots
from lib.claims import ClaimsLedger, ledger_table
from lib.memory import estimate, gpu_run

run_dir = Path(output_dir) / run_name
ledger = ClaimsLedger("02_memory_budget", run_dir)
grid = memory.load_measurements(measurements)
rows = memory.measured_rows(grid)
provenance = grid["provenance"]
print(f"{len(rows)} measured points: {provenance['gpu']}, driver {provenance['driver']}, CUDA {provenance['cuda']}, "
      f"{provenance['date']}; " + ", ".join(f"{k} {v}" for k, v in provenance["versions"].items()))

# %% [markdown]
# ## 1. The Trinity, term by term
#
# The default setting of the course (NF4 with double quantization, r = 64 on all 7 projections,
# rsLoRA, DoRA, 8-bit AdamW, unsloth with offloaded checkpointing and its chunked loss, batch 1)
# at 4096 tokens, for every Gemma 3 size, beside the memory of the GPUs people train on:

# %%
trinity = {size: estimate(gpu_run(size, rank=rank, max_seq_length=max_seq_length)) for size in sizes}
gpu_memory = {name: memory.gpu_profile(name).memory_gib for name in ["T4", "L4", "A100-40GB"]}
plots.memory_breakdown(trinity, gpu_memory);

# %%
pd.DataFrame({size: e.as_row() for size, e in trinity.items()}).T

# %% [markdown]
# The same 12B step under plain transformers + peft (standard checkpointing, full logits) and
# with each of the source's OOM-ladder changes, to see which term each change moves:

# %%
base = gpu_run("12B", rank=rank, max_seq_length=max_seq_length)
variants = {
    "unsloth Trinity": base,
    "peft Trinity": gpu_run("12B", backend="peft", rank=rank, max_seq_length=max_seq_length),
    "seq 2048": gpu_run("12B", rank=rank, max_seq_length=2048),
    "r = 32": gpu_run("12B", rank=32, max_seq_length=max_seq_length),
    "DoRA off": gpu_run("12B", rank=rank, use_dora=False, max_seq_length=max_seq_length),
    "q_proj, v_proj only": gpu_run("12B", rank=rank, target_modules=("q_proj", "v_proj"),
                                         max_seq_length=max_seq_length),
    "32-bit AdamW": gpu_run("12B", rank=rank, optim="adamw_torch", max_seq_length=max_seq_length),
}
plots.memory_breakdown({k: estimate(v) for k, v in variants.items()}, gpu_memory);

# %% [markdown]
# ## 2. The exact terms, checked on this machine
#
# Weights, adapter and optimizer state are counted from the shapes, not fitted. Here the
# embedded model is loaded in NF4 through the course's loader (peft backend, so the embedding is
# cast to fp32) and its tensors are counted byte by byte (`lib.quantization.stored_bytes`,
# which includes the 4-bit constants), then one 8-bit AdamW step creates the optimizer state:

# %%
import torch
from lib.oom_ladder import make_optimizer
from lib.quantization import stored_bytes
from lib.run_spec import RunSpec
from lib.training import load_for_training

# bfloat16, as on a GPU, so that the counted bytes are the ones the estimator models
spec = RunSpec.of(model_name, rank=rank, backend="peft", compute_dtype="bfloat16", max_seq_length=128,
                  optim="adamw_8bit")
model, tokenizer = load_for_training(spec)
trainable = [p for p in model.parameters() if p.requires_grad]
optimizer = make_optimizer(spec.optimisation.optim, trainable)
model(input_ids=torch.tensor([[2, 106, 1645]]), labels=torch.tensor([[2, 106, 1645]])).loss.backward()
optimizer.step()
state = memory.optimizer_state_bytes(optimizer)
adapter = sum(p.numel() * p.element_size() for p in trainable)
local = spec.replace(model=memory.shape_of(model.config))  # the same run, its shape read from the loaded config
exact = pd.DataFrame({
    "counted from the loaded model (bytes)": [stored_bytes(model) - adapter, adapter, state],
    "estimated from the config (bytes)": [memory.weight_bytes(local), memory.adapter_bytes(local),
                                          memory.optimizer_bytes(local)]},
    index=["weights", "adapter", "optimizer (8-bit AdamW)"])
exact["difference"] = exact.iloc[:, 1] / exact.iloc[:, 0] - 1
del model, optimizer
exact.style.format({"difference": "{:+.3%}"}).format("{:,.0f}", subset=exact.columns[:2])

# %% [markdown]
# The same three terms were counted on the GPU for every measured point; the largest difference
# between those counts and the estimate over the whole grid (the relative one for the optimizer
# comes from the paged optimizer, whose state in the allocator is a few MiB):

# %%
pd.DataFrame(memory.exact_term_errors(rows)).T.style.format({"largest difference (MiB)": "{:.1f}", "relative": "{:.2%}"})

# %% [markdown]
# ## 3. Estimate against measurement
#
# The grid (`tools/memory_grid.py`, stored in `data/measurements/gpu-memory-grid.json`):
# random-init models of the real 270M, 1B, 4B and 12B shapes (memory does not depend on the
# weight values), unsloth and transformers + peft, r ∈ {16, 64}, DoRA on/off, sequence lengths
# 1024, 2048, 4096, plus single changes at 12B (r = 32, q/v only, attention only, 32-bit and
# paged AdamW, standard checkpointing), batch 2 and 4 at 4B and no checkpointing at 1B. Each
# point: two training steps of random tokens, peak = `torch.cuda.max_memory_allocated`.
#
# The activation and logits terms have one coefficient each (bytes per unit), fitted to the grid
# by least squares on relative error (`memory.fit_coefficients`). Left: the estimator as shipped.
# Right, the harder test: each size predicted by coefficients fitted **without** that size.

# %%
def peak_or_none(rows, size, **settings):
    try:
        return memory.measured_peak(rows, size, **settings)
    except KeyError:
        return None


shipped = pd.DataFrame(memory.comparison(rows))
held_out = pd.DataFrame(memory.leave_one_size_out([r for r in rows if r["checkpointing"] != "off"]))
plots.estimate_vs_measured({"estimator (fitted on all 93 points)": shipped,
                            "each size held out of the fit": held_out});

# %%
def error_summary(table):
    return table.assign(abs_error=table["error"].abs()).groupby(["size", "backend"])["abs_error"].agg(
        ["mean", "max", "count"])


summary = pd.concat({"shipped": error_summary(shipped), "held out": error_summary(held_out)}, axis=1)
summary.style.format("{:.1%}", subset=[c for c in summary.columns if c[1] != "count"])

# %%
worst = shipped.reindex(shipped["error"].abs().sort_values(ascending=False).index).head(5)
worst[["setup", "measured_gib", "estimated_gib", "error"]].style.format(
    {"measured_gib": "{:.2f}", "estimated_gib": "{:.2f}", "error": "{:+.1%}"}).hide(axis="index")

# %%
print(f"shipped estimator: largest error {shipped['error'].abs().max():.1%} over {len(shipped)} points; "
      f"held-out sizes: largest {held_out['error'].abs().max():.1%}, median {held_out['error'].abs().median():.1%}")

# %% [markdown]
# What the comparison says:
#
# * The shipped estimator is within 10% of every measured point (largest error printed above).
#   Its worst points are the 12B step with unsloth's *standard* (not offloaded) checkpointing,
#   overestimated, and small models whose peak is a fixed workspace rather than anything that
#   scales.
# * Predicting a size it has never seen is harder. With 1B, 4B and 12B the terms extrapolate
#   within a few percent for most points; the largest held-out errors are named in the table
#   below and come from terms only one or two sizes constrain (DoRA's norm temporaries, which
#   grow with the largest weight matrix; the fixed workspace of unsloth's chunked loss, which
#   dominates the 270M).
# * No checkpointing was measured at 1B only, so it is left out of the held-out test.
# * Every measured point is NF4 with double quantization. For bf16, fp16, fp32, int8 and plain
#   NF4 the weights are exact, but their activations reuse the NF4 coefficients unmeasured (a
#   12B bf16 point was planned and did not finish within the GPU time).
# * The project's earlier reference measurement of the 12B Trinity step reports 15.32 GiB where
#   this grid measures 13.32 GiB (below).

# %%
held_worst = held_out.reindex(held_out["error"].abs().sort_values(ascending=False).index).head(5)
held_worst[["setup", "measured_gib", "estimated_gib", "error"]].style.format(
    {"measured_gib": "{:.2f}", "estimated_gib": "{:.2f}", "error": "{:+.1%}"}).hide(axis="index")

# %% [markdown]
# The only point beyond the grid: the reference measurement of 27B (unsloth, Trinity, 2048
# tokens; data/measurements/gpu-anchor-h200.json), a size the fit never saw:

# %%
import json

anchor_file = json.loads(Path("data/measurements/gpu-anchor-h200.json").read_text())
anchor_runs, anchor_provenance = anchor_file["runs"], anchor_file["provenance"]
anchor = next(r for r in anchor_runs if r["shape"] == "27B")
# the reference trained with unsloth's DoRA, which is peft's
predicted_27b = estimate(gpu_run("27B", max_seq_length=anchor["max_seq_length"], dora_implementation="peft")).peak_allocated
print(f"27B seq {anchor['max_seq_length']}: measured {anchor['peak_allocated_gib']:.2f} GiB, estimated "
      f"{predicted_27b:.2f} GiB ({predicted_27b / anchor['peak_allocated_gib'] - 1:+.1%})")

# %% [markdown]
# The reference runs and this grid agree to the hundredth of a GiB without DoRA (12B at 4096:
# 10.67 both; 4B at 2048: 4.33 both) but not with it: the reference's DoRA steps are higher by
# 1.0 GiB (4B) and 2.0 GiB (12B). Both used unsloth 2026.10.9 and peft 0.21.0; the reference's
# harness is not in this repository, so the cause is not settled here. The table below puts them
# side by side; the estimator follows this grid, and chapter 5's capped runs met the grid's value.

# %%
pd.DataFrame([{"size": r["shape"], "seq": r["max_seq_length"], "DoRA": r["dora"],
               "reference (GiB)": r["peak_allocated_gib"],
               "this grid (GiB)": peak_or_none(rows, r["shape"], seq=r["max_seq_length"], dora=r["dora"])}
              for r in anchor_runs if r["backend"] == "unsloth"])

# %% [markdown]
# The grid's DoRA is peft's, the implementation unsloth uses. The course trains
# with its own DoRA (`lib.fast_dora.use_fast_dora`, the default of `load_for_training`): the same
# adapter, numerically equal to peft's, with the norm computed once per optimizer step. Its GPU
# benchmark is stored measurements (`data/measurements/dora-benchmark*.json` and
# `dora-27b-h200.json`, provenance inside; README "Fast DoRA"), made on different days and cards
# as the code changed: each row is compared with the LoRA row of its own run, and says where and
# when it was measured; the interleaved run (its models in one process, their steps in turn) gives
# the median of each round's ratio and no memory of its own, its models' being counted together.
# The 27B is uncapped here and under an L4's memory in the next section.
# The estimator counts the fast DoRA's few extra buffers (section 4 sets its estimate against
# the 27B's measured peak):

# %%
from lib.fast_dora import compare_with_lora

def dora_run(name: str) -> list[dict]:
    """One stored benchmark run's rows, each compared with that run's LoRA row and labelled."""
    measured = json.loads(Path("data/measurements", name).read_text())
    where = measured["provenance"].get("label") or f"{measured['provenance']['gpu'].split(' (')[0]}, " \
                                                  f"{measured['provenance']['date']}"
    rows = measured["rows"] + [r for run in measured.get("other_runs", [])[:1] for r in run["rows"]]
    return [r | {"measured": where} for r in compare_with_lora(rows)]


dora_rows = [r for name in ("dora-benchmark.json", "dora-27b-h200.json", "dora-benchmark-h100-2026-12-07.json",
                         "dora-benchmark-h200-2026-12-07.json", "dora-benchmark-h100-2026-12-07-pm.json",
                         "dora-benchmark-h100-2026-12-07-interleaved.json",
                         "dora-benchmark-h100-2026-12-07-interleaved-12b.json")
             for r in dora_run(name)]
pd.DataFrame([{"size": r["size"], "seq": r["seq"], "DoRA": r["variant"], "s/step": r["step_seconds"],
               "x LoRA time": r["time_vs_lora"], "peak allocated (GiB)": r["peak_allocated_gib"],
               "peak reserved (GiB)": r.get("peak_reserved_gib"), "over LoRA (GiB)": r["gib_over_lora"],
               "measured": r["measured"]}
              for r in dora_rows if r.get("cap") is None]).round(2)

# %% [markdown]
# ## 4. Which GPU fits which model
#
# Memory a GPU gives PyTorch is less than its label: a "16 GB" T4 reports 14.56 GiB. The
# estimator's device total adds the allocator's slack (90th percentile of reserved/allocated
# over the grid, +13%) and the CUDA context (0.6 GiB measured), so it errs on the safe side. For
# each GPU and size: the first rung of the OOM ladder (chapter 5) predicted to fit, starting from
# the Trinity at 4096 tokens. "measured" marks cells a GPU run checked under that GPU's memory.

# %%
from lib.oom_ladder import recommend

measured_cells = {("T4", "12B"),  # chapter 5's capped run of the unsloth Trinity (with peft's DoRA, the heavier)
                  ("L4", "27B")}  # dora-*.json: LoRA and the Trinity at 4096 under the L4's cap
fit_table = {}
for gpu in gpus:
    profile = memory.gpu_profile(gpu)
    column = {}
    for size in sizes:
        found = recommend(size, profile, rank=rank, max_seq_length=max_seq_length)
        text = "does not fit" if found is None else f"{found[0]} ({found[2].total:.1f} GiB)"
        column[size] = text + (" · measured" if (gpu, size) in measured_cells else "")
    fit_table[f"{gpu} ({profile.memory_gib:.1f} GiB{'' if profile.bf16 else ', no bf16'})"] = column
pd.DataFrame(fit_table)

# %% [markdown]
# GPU memory comes from what PyTorch reports on each card (sources in `lib.memory.GPU_PROFILES`;
# the A10G is assumed equal to the L4, not measured).
#
# The 27B on an L4, measured with the allocator capped to the L4's 22.03 GiB less the CUDA
# context (as chapter 5 does):

# %%
pd.DataFrame([{"variant": r["variant"], "allocator cap (GiB)": r["allocator_cap_gib"],
               "result": "ran" if "step_seconds" in r else f"out of memory after {r['steps_done']} steps",
               "s/step": r.get("step_seconds"),
               "peak allocated (GiB)": r.get("peak_allocated_gib", r.get("peak_allocated_gib_before_error")),
               "peak reserved (GiB)": r.get("peak_reserved_gib"), "measured": r["measured"]}
              for r in dora_rows if r.get("cap") == "L4"]).round(2)

# %%
l4_run = next(r for r in reversed(dora_rows) if r.get("cap") == "L4" and "step_seconds" in r)
l4_estimate = estimate(gpu_run("27B"), allocator_gib=l4_run["allocator_cap_gib"])
print(f"27B Trinity at 4096 under the L4's cap ({l4_run['variant']}): peak allocated measured "
      f"{l4_run['peak_allocated_gib']:.2f} GiB, estimated {l4_estimate.peak_allocated:.2f} GiB; the estimate's "
      f"device total with slack and context {l4_estimate.total:.2f} GiB against the L4's "
      f"{memory.gpu_profile('L4').memory_gib:.2f}")

# %% [markdown]
# LoRA at 4096 tokens fits. The Trinity did not on
# 2026-12-03: its peak allocated was under the L4's 22.03 GiB, but with the allocator's reserve
# and the CUDA context (0.67 GiB) it ran out of memory. Two changes made it fit on 2026-12-07:
# DoRA's per-channel scale now writes into the LoRA update's own output (one 168 MiB temporary
# fewer per MLP projection at 4096 tokens), and the norms are refreshed without the CUDA graph,
# whose private pool keeps about one dequantized weight of the largest layer for good
# (`lib.fast_dora.norm_graph_fits`: on such a card the course's default skips the graph).
# The estimator's fast-DoRA terms are counted, not fitted (the grid measured peft's DoRA): one
# backward temporary of the largest projection's output, the norm buffers, and the graph's pool
# where the graph is used (`lib.memory.FAST_DORA_BYTES`). Below, its peak for this run against
# the measured one: close, but its device total adds the allocator's 13% slack, which this run
# did not need, so the table above still sends the 27B down a rung on an L4. The margin is thin,
# and the measured run is the evidence.
#
# **A T4 has no bfloat16**, and float16 overflows Gemma 3, so what a step holds depends on the
# backend (`lib.precision.gpu_precision`): unsloth loads Gemma 3 in 16 bits with float32 for the
# parts that overflow and turns float16 autocast off; the peft backend computes in float32. The
# estimator takes the activations' dtype (float32 doubles the activation terms; the logits and
# DoRA's norm are fp32 in every case) and the table above uses the backend's. Both paths were
# measured on the H200 (unsloth's by asking it for float16, which sends Gemma 3 down the same
# branch as a GPU without bfloat16), next to the bf16 grid's point for the same setup:

# %%
dtype_runs = memory.measured_rows(memory.load_measurements(memory.DTYPE_MEASUREMENTS))
bf16_peaks = {r["spec"].describe(): r["peak_allocated_gib"] for r in rows}
dtype_table = pd.DataFrame([c | {"bf16 measured_gib": bf16_peaks.get(r["spec"].replace(compute_dtype="bfloat16").describe())}
                            for c, r in zip(memory.comparison(dtype_runs), dtype_runs)])
dtype_table["vs bf16"] = dtype_table["measured_gib"] / dtype_table["bf16 measured_gib"] - 1
for backend, group in dtype_table.groupby("backend"):
    print(f"{backend}: measured {group['vs bf16'].min():+.1%} to {group['vs bf16'].max():+.1%} against bf16; "
          f"estimate {group['error'].min():+.1%} to {group['error'].max():+.1%}")
dtype_table[["setup", "bf16 measured_gib", "measured_gib", "vs bf16", "estimated_gib", "error"]].style.format(
    {"bf16 measured_gib": "{:.2f}", "measured_gib": "{:.2f}", "vs bf16": "{:+.1%}", "estimated_gib": "{:.2f}",
     "error": "{:+.1%}"}).hide(axis="index")

# %% [markdown]
# In float32 the peft step grows by about one percent only: peft's k-bit preparation already
# keeps the embedding output, and with it the residual stream, in fp32, and the full-vocabulary
# logits are fp32 whatever the compute dtype. Unsloth's no-bf16 path measured *below* its bf16
# runs, and the estimator, which gives it bf16's coefficients, errs on the high side there.

# %% [markdown]
# ## 5. Against full fine-tuning
#
# What QLoRA saves is clearest against full fine-tuning, where every parameter is trained with
# AdamW: the weights, a gradient per weight and AdamW's two moments per weight, before any
# activation. `lib.memory.full_finetune_bytes` counts them exactly from the shapes for the usual
# mixed precision (fp32 master weights, bf16 compute: 16 bytes per parameter) and for everything
# in bf16 (8 bytes per parameter). The 270M and 1B were fully fine-tuned on an H200 (random
# weights, batch 1 at 1024 tokens, gradient checkpointing; `tools/claims_gpu.py`, stored in
# `data/measurements/claims-gpu.json`), and their tensors counted on the GPU:

# %%
claims_gpu = json.loads(Path("data/measurements/claims-gpu.json").read_text())
full_rows = {(r["size"], r["mode"]): r for r in claims_gpu["rows"] if r["kind"] == "full_ft"}
full_table = []
for size in sizes:
    for mode in memory.FULL_FINETUNE_MODES:
        terms = {k: v / 2**30 for k, v in memory.full_finetune_bytes(size, mode).items() if k != "parameters"}
        measured_row = full_rows.get((size, mode), {})
        full_table.append({"size": size, "precision": mode, **{f"{k} (GiB)": v for k, v in terms.items()},
                           "counted on the GPU (GiB)": sum(measured_row.get(f"{k}_gib", 0)
                                                           for k in ("weights", "gradients", "optimizer")) or None,
                           "peak allocated, measured (GiB)": measured_row.get("peak_allocated_gib")})
pd.DataFrame(full_table).round(2)

# %% [markdown]
# The counted terms equal the accounting to the hundredth of a GiB, and the measured peak adds
# the activations and the 262k-vocabulary logits on top. The 12B's Trinity (section 1) needs a
# small fraction of what its full fine-tuning needs even in pure bf16.
#
# **Loading a pre-quantized checkpoint.** The source says loading a checkpoint saved already in
# bitsandbytes' 4-bit format "saves ~30 min". Measured on the same H200 with the 12B's shapes: the
# 16-bit checkpoint quantized at load, then the same model saved pre-quantized and loaded again
# (both files were just written, so they came from the page cache: this is the loading work;
# what a download of the larger file costs depends on the network, which cannot be measured
# offline):

# %%
load_row = next(r for r in claims_gpu["rows"] if r["kind"] == "load")
pd.DataFrame([{"checkpoint": "bf16, quantized to NF4 at load", "size (GiB)": load_row["bf16_checkpoint_gib"],
               "load seconds": load_row["quantize_at_load_seconds"]},
              {"checkpoint": "pre-quantized bnb-4bit", "size (GiB)": load_row["prequantized_checkpoint_gib"],
               "load seconds": load_row["prequantized_load_seconds"]}]).round(2)

# %% [markdown]
# ## Claims ledger
#
# The source's memory claims, against the grid (H200, peak allocated) and the estimator:

# %%
def peak(size, **settings):
    return memory.measured_peak(rows, size, **settings)


# The claims are about the source's setting (r = 64 at 4096 tokens), whatever the tables above show.
claim_estimate = {size: estimate(gpu_run(size, rank=64, max_seq_length=4096)) for size in ("12B", "27B")}


trinity_12b, lora_12b = peak("12B"), peak("12B", dora=False)
dora_peft = peak("12B", backend="peft") - peak("12B", backend="peft", dora=False)
ledger.measure("C10", f"12B r=64 seq 4096: DoRA {trinity_12b - lora_12b:+.2f} GiB under unsloth "
               f"({trinity_12b:.2f} vs {lora_12b:.2f}, {trinity_12b / lora_12b - 1:+.0%}); {dora_peft:+.2f} GiB under peft",
               "3. Estimate against measurement", {"dora_extra_gib": trinity_12b - lora_12b}, where=provenance["gpu"])
e12 = claim_estimate["12B"]
adapter_state = e12.adapter + e12.gradients + e12.optimizer
ledger.measure("C11", f"12B Trinity seq 4096 (unsloth): peak {trinity_12b:.2f} GiB allocated; terms: weights "
               f"{e12.weights:.2f}, adapter+gradients+optimizer {adapter_state:.2f}, "
               f"activations {e12.activations:.2f} GiB; device total with context and slack {e12.total:.2f} GiB "
               f"vs a T4's {memory.gpu_profile('T4').memory_gib} GiB", "1. The Trinity, term by term",
               {"weights_gib": e12.weights, "adapter_state_gib": adapter_state, "activations_gib": e12.activations,
                "total_gib": e12.total},
               note="every term is checked against the source's, not only the total; it fits a T4 only just "
                    "(chapter 5's capped runs fitted once and hit OOM once)",
               where=provenance["gpu"])
batch2 = estimate(gpu_run("12B", batch_size=2, max_seq_length=2048))
ledger.record("C12", f"12B on a T4 (estimate): seq 4096 batch 1 {e12.total:.1f} GiB; seq 2048 batch 2 "
              f"{batch2.total:.1f} GiB; 8192 OOM measured in chapter 5", "depends", "4. Which GPU fits which model",
              note="4096 is the edge, not a safe margin; batch 1 holds at 4096")
steps = [("seq 4096->2048", peak("12B"), peak("12B", seq=2048)),
         ("r 64->32", peak("12B", seq=2048), peak("12B", seq=2048, rank=32)),
         ("DoRA off", peak("12B", seq=2048, rank=32), peak("12B", seq=2048, rank=32, dora=False)),
         ("q/v only", peak("12B", seq=2048, rank=32, dora=False),
          peak("12B", seq=2048, rank=32, dora=False, targets=("q_proj", "v_proj")))]
check_names = {"seq 4096->2048": "seq_halving_freed_gib", "r 64->32": "rank_halving_freed_gib",
               "DoRA off": "dora_off_freed_gib", "q/v only": "qv_only_freed_gib"}
ledger.measure("C13", "12B unsloth, cumulative rungs: " + "; ".join(
    f"{name} frees {before - after:.2f} GiB" for name, before, after in steps),
    "3. Estimate against measurement", {check_names[name]: before - after for name, before, after in steps},
    where=provenance["gpu"])
attention = peak("12B", targets=("q_proj", "k_proj", "v_proj", "o_proj"))
ledger.measure("C14", f"12B Trinity seq 4096: attention-only targets {attention:.2f} vs all 7 {trinity_12b:.2f} GiB: "
               f"{1 - attention / trinity_12b:.0%} less", "3. Estimate against measurement",
               {"saving_percent": 100 * (1 - attention / trinity_12b)}, where=provenance["gpu"])
adam32 = [r for r in rows if r["size"] == "12B" and r["optimizer"] == "adamw_torch"][0]
adam8 = [r for r in rows if r["size"] == "12B" and r["tag"] == "grid" and r["dora"] and r["rank"] == 64][0]
saving = 1 - adam8["optimizer_gib"] / adam32["optimizer_gib"]
ledger.measure("C15", f"12B r=64 DoRA: optimizer state {adam32['optimizer_gib']:.2f} GiB (AdamW) -> "
               f"{adam8['optimizer_gib']:.2f} GiB (8-bit): {saving:.0%} less; the state is 2 GiB, not 8",
               "3. Estimate against measurement", {"saving_percent": 100 * saving},
               note="quality impact not measured here", where=provenance["gpu"])
standard = peak("12B", backend="peft", dora=False, rank=16)
ledger.measure("C16", f"12B QLoRA r=16 under transformers+peft, seq 4096: {standard:.1f} GiB; seq 1024: "
               f"{peak('12B', backend='peft', dora=False, rank=16, seq=1024):.1f} GiB",
               "3. Estimate against measurement", {"standard_gib": standard},
               caveat="'standard' read as transformers+peft QLoRA at r=16 and 4096 tokens; it grows with seq",
               where=provenance["gpu"])
# Memory and speed of the two backends from the same runs: the stored H200 anchor (chapter 1's source).
both = memory.backend_ratios(anchor_runs)
ledger.measure("C21", "transformers+peft over unsloth, r=64, batch 1: " + "; ".join(
    f"{setting}: {v['memory_ratio']:.1f}x memory, {v['speedup']:.1f}x step time" for setting, v in both.items()),
    "3. Estimate against measurement", both, where=f"{anchor_provenance['hardware']}, {anchor_provenance['date']}, "
    "data/measurements/gpu-anchor-h200.json", note="the memory gap is mostly the full-vocabulary logits")
fast_27b = [r for r in dora_rows if r["size"] == "27B" and r["variant"] == "DoRA (fast)" and r.get("cap") is None][-1]
l4_27b = [r for r in dora_rows if r["size"] == "27B" and r["variant"].startswith("DoRA") and r.get("cap") == "L4"][-1]
ledger.measure("C22", f"Trinity seq 4096 (unsloth): 4B {peak('4B'):.1f} GiB, 12B {trinity_12b:.1f} GiB measured; "
               f"27B with the course's fast DoRA {fast_27b['peak_allocated_gib']:.1f} GiB measured "
               f"({fast_27b['measured']}; the estimator says "
               f"{claim_estimate['27B'].peak_allocated:.1f}), and "
               f"{'trained' if 'step_seconds' in l4_27b else 'ran out of memory'} under an L4's memory",
               "4. Which GPU fits which model",
               {"peak_4b_gib": peak("4B"), "peak_12b_gib": trinity_12b,
                "peak_27b_gib": fast_27b["peak_allocated_gib"]},
               note="as upper bounds; the 12B on a T4 only at the edge", where=provenance["gpu"])
full_12b = {mode: memory.full_finetune_bytes("12B", mode)["total"] / 2**30 for mode in memory.FULL_FINETUNE_MODES}
gpu_where = f"{claims_gpu['provenance']['gpu']}, {claims_gpu['provenance']['date']}, data/measurements/claims-gpu.json"
ledger.measure("C01", f"12B full fine-tuning, weights + gradients + AdamW states before activations: "
               f"{full_12b['mixed']:.0f} GiB (mixed precision), {full_12b['bf16']:.0f} GiB (all bf16); the accounting "
               f"checked on the GPU for 270M and 1B (peaks {full_rows[('270M', 'mixed')]['peak_allocated_gib']:.1f} and "
               f"{full_rows[('1B', 'mixed')]['peak_allocated_gib']:.1f} GiB)", "5. Against full fine-tuning",
               {"full_finetune_gib": full_12b["bf16"]},
               note="'48 GB+' holds as a lower bound and understates it: even in pure bf16 the static terms are ~2x",
               where=gpu_where)
download_gib = load_row["bf16_checkpoint_gib"] - load_row["prequantized_checkpoint_gib"]
load_saved = load_row["quantize_at_load_seconds"] - load_row["prequantized_load_seconds"]
ledger.measure("C29", f"12B shapes: loading {load_row['quantize_at_load_seconds']:.1f} s quantizing at load vs "
               f"{load_row['prequantized_load_seconds']:.1f} s pre-quantized; the download is {download_gib:.1f} GiB "
               f"smaller ({download_gib * 2**30 * 8 / 100e6 / 60:.0f} min less at 100 Mbit/s)",
               "5. Against full fine-tuning", {"load_saved_minutes": load_saved / 60}, where=gpu_where,
               note="the loading work saves seconds, not 30 min; a saving of that size can only come from the "
                    "download, which depends on the network and was not measured (no network here)")
ledger_table(run_dir, only_measured=True).query(
    "id in ['C01','C10','C11','C12','C13','C14','C15','C16','C21','C22','C29']")

# %% [markdown]
# ## Summary
#
# * `lib.memory.estimate(spec)` gives the peak term by term for any run spec (`lib.run_spec`;
#   `gpu_run` builds one at the source's GPU setting): Gemma 3 size or config, precision, rank,
#   targets, DoRA, optimizer, checkpointing, sequence, batch and loss.
# * Weights, adapter and optimizer state are exact; activations and logits are fitted to 93 GPU
#   measurements and within 10% of each. The course's fast DoRA adds counted terms, within 3% of
#   its measured peaks (1B, 4B and 27B, with and without an L4's memory cap).
# * The plain transformers + peft stack spends most of its memory on the logits of a
#   262k-entry vocabulary; unsloth's chunked loss is why the same step takes 2-4x less.
# * Full fine-tuning of the 12B needs 175 GiB of weights, gradients and AdamW states in mixed
#   precision (88 GiB in pure bf16) before activations; the accounting matches the tensors counted
#   on a GPU for the 270M and 1B.
# * A pre-quantized 4-bit checkpoint loads seconds faster than quantizing at load; its real
#   saving is the smaller download.
# * Chapter 5 turns the estimator into an OOM ladder and checks it under a T4's memory.
