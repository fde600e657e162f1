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
# # 4. Trinity training: QLoRA + LoRA r=64 + rsLoRA + DoRA
#
# This chapter fine-tunes Gemma 3 on the prepared dataset of chapter 03 with the Trinity:
#
# * **QLoRA**: the base weights are stored in 4-bit NormalFloat (NF4) with double quantization of
#   the block constants, and stay frozen;
# * **LoRA, rank 64, alpha 32** on all 7 projections of every layer (q, k, v, o, gate, up, down);
# * **rsLoRA**: the update B·A is scaled by alpha/sqrt(r) instead of alpha/r;
# * **DoRA**: each output channel's magnitude is learned separately from its direction. The
#   course computes it with `lib.fast_dora`: peft's adapter and files, its norm computed
#   once per optimizer step instead of at every forward (README, "Fast DoRA": on an H100 the
#   12B Trinity step takes 1.09x LoRA's time, where peft's DoRA took 2.55x).
#
# Only assistant tokens carry loss (response-only loss). The run writes a status file at every
# logging step, checkpoints every `save_steps`, and resumes from the last checkpoint when rerun
# after an interruption (Ctrl-C, a killed kernel, a Colab disconnect).

# %% tags=["parameters"]
model_name = "gemma-3-270m"          # embedded alias, local folder or hub id
run_name = "default"                 # artifacts: <output_dir>/<run_name>/
output_dir = "output"
max_steps = 100
max_seq_length = 384
rank = 64
alpha = 32
use_rslora = True
use_dora = True
backend = "auto"                     # "auto", "unsloth" or "peft"
compute_dtype = "auto"               # "auto" (lib.precision: measured on a CPU), "bfloat16" or "float32"
seed = 3407
batch_size = 4
gradient_accumulation_steps = 1
learning_rate = 2e-4
warmup_steps = 5
save_steps = 25
sample_every = 25                    # sample 2 validation prompts every N steps
sample_max_new_tokens = 64
resume = True                        # continue from this run's last checkpoint
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

# %% [markdown]
# ## Backend, data and model
#
# The backend and compute precision come from chapter 00's check; the data from chapter 03's
# prepared splits.

# %%
import pandas as pd
import torch
from lib.data import load_prepared
from lib.environment import import_backend, validate_environment

env = validate_environment(compute_dtype)
chosen_backend = env.backend if backend == "auto" else backend
import_backend(chosen_backend)  # unsloth must be imported before transformers to patch it
print(f"backend: {chosen_backend} ({env.backend_reason})")
print(f"compute dtype: {env.compute_dtype} ({env.dtype_reason})")
run_dir = Path(output_dir) / run_name
splits = load_prepared(run_dir / "data")
print({split: len(rows) for split, rows in splits.items()})

# %%
from lib.lora import trainable_parameters
from lib.run_spec import RunSpec
from lib.training import load_for_training

# The whole run in one spec (`lib.run_spec`): what is not set here keeps the course's default.
spec = RunSpec.of(model_name, rank=rank, alpha=alpha, use_rslora=use_rslora, use_dora=use_dora, max_steps=max_steps,
                  batch_size=batch_size, gradient_accumulation_steps=gradient_accumulation_steps,
                  learning_rate=learning_rate, warmup_steps=warmup_steps, max_seq_length=max_seq_length, seed=seed,
                  save_steps=save_steps, sample_every=sample_every, sample_max_new_tokens=sample_max_new_tokens,
                  backend=chosen_backend, compute_dtype=compute_dtype)
torch.manual_seed(seed)
model, tokenizer = load_for_training(spec)
counts = trainable_parameters(model)
settings = spec.adapter.to_dict() | {"target_modules": ", ".join(spec.adapter.target_modules),
                                     "trainable parameters": f"{counts['trainable']:,} of {counts['total']:,} "
                                                             f"({counts['percent']:.2f}%)"}
pd.DataFrame(settings.items(), columns=["setting", "value"])

# %% [markdown]
# `scaling` is the factor on B·A: alpha/sqrt(r) under rsLoRA, alpha/r under plain LoRA, so at
# r=64 rsLoRA's update is sqrt(64) = 8 times larger for the same alpha. The trainable count
# includes DoRA's magnitude vectors (one per output channel of each adapted layer).
#
# ## Response-only loss, checked
#
# The labels of each training sequence are -100 (ignored) everywhere except on the assistant's
# answer. Decoding the tokens that carry loss must give back exactly the answer and the
# end-of-turn marker, nothing of the prompt:

# %%
from lib.data import tokenize_conversation

example = splits["train"][0]
tokens = tokenize_conversation(tokenizer, example.messages)
trained = [t for t, m in zip(tokens["input_ids"], tokens["assistant_masks"]) if m]
decoded = tokenizer.decode(trained)
print(f"{sum(tokens['assistant_masks'])} of {len(tokens['input_ids'])} tokens carry loss:\n{decoded}")
assert decoded == example.reference + "<end_of_turn>\n"

# %% [markdown]
# ## Train
#
# `training-status.json` in the run folder is rewritten (atomically) at every logging step:
# another notebook or `watch cat output/<run>/training-status.json` can follow the run. If this
# cell is interrupted, rerunning it continues from the last checkpoint.

# %%
from lib.training import train

sample_prompts = [record.prompt_messages for record in splits["val"][:2]]
# optimizer: the spec's default, the recipe's 8-bit AdamW on a GPU and torch's AdamW on a CPU
result = train(model, tokenizer, splits["train"], spec, run_dir, env.device, sample_prompts=sample_prompts,
               resume=resume)
pd.Series(result.stats).drop(["config", "trainable_parameters"])

# %% [markdown]
# ## Loss and memory
#
# The loss is the mean cross-entropy over assistant tokens of each batch. Memory is what the
# process holds at each logged step: on a GPU, memory reserved by PyTorch's allocator; on a CPU,
# the resident set size.

# %%
from lib import plots
from lib.artifacts import read_json
from lib.training import read_log, run_paths

log = read_log(run_dir)
plots.training_curves(log, "reserved by torch" if env.device == "cuda" else "resident set size (RSS)");

# %% [markdown]
# ## What the model writes as it trains
#
# Greedy completions of two validation prompts (modules never trained on), every
# `sample_every` steps:

# %%
from lib.artifacts import read_jsonl

samples_path = run_paths(run_dir)["samples"]
samples = pd.DataFrame(read_jsonl(samples_path)) if samples_path.exists() else pd.DataFrame()
if len(samples):
    for (step, prompt), text in samples.set_index(["step", "prompt"])["text"].items():
        print(f"=== step {step}, prompt {prompt}: {sample_prompts[prompt][-1]['content'].splitlines()[0]}\n{text}\n")

# %% [markdown]
# ## The run's files

# %%
import json

status = read_json(run_paths(run_dir)["status"])
print(json.dumps(status, indent=2))
assert status["running"] is False and status["error"] is None and status["step"] == max_steps

# %% [markdown]
# ## The same training on a GPU: speed at this data's lengths
#
# How long does the Trinity take on a GPU for data like this? The course's own loader and Trinity
# (NF4 + double quantization, r = 64, rsLoRA, fast DoRA, 8-bit AdamW, unsloth) were timed on an
# H200 for the 4B and 12B shapes (random weights, batch 1; `tools/claims_gpu.py`, stored in
# `data/measurements/claims-gpu.json` with its provenance). Each example is one step at batch 1,
# so the time per 1,000 examples follows from the step time at each example's token length
# (`lib.training.seconds_per_example`), with this dataset's lengths:

# %%
import numpy as np
from lib.training import seconds_per_example

claims_gpu = read_json("data/measurements/claims-gpu.json")
gpu_runs = {r["size"]: r for r in claims_gpu["rows"] if r["kind"] == "trinity"}
train_lengths = [len(tokenize_conversation(tokenizer, r.messages)["input_ids"]) for r in splits["train"]]
speed = pd.DataFrame([{"size": size, "seq": row["seq"], "s/step": row["step_seconds"],
                       "tokens/s": row["tokens_per_second"], "peak allocated (GiB)": row["peak_allocated_gib"],
                       "first step at this length (s)": row["first_step_seconds"]}
                      for size, run in gpu_runs.items() for row in run["by_seq"]])
per_example = {size: seconds_per_example({row["seq"]: row["step_seconds"] for row in run["by_seq"]}, train_lengths)
               for size, run in gpu_runs.items()}
print(f"{claims_gpu['provenance']['gpu']}, {claims_gpu['provenance']['date']}; this dataset's train examples: "
      f"median {int(np.median(train_lengths))} tokens, {len(train_lengths)} examples")
speed

# %% [markdown]
# A T4 was not available. What a T4 would do can only be estimated, and the basis has to be
# stated: its peak dense tensor throughput is 65 TFLOP/s in fp16 (NVIDIA T4 datasheet) against the
# H200's 989 in bf16 (H200 datasheet; 790 measured here on large products), and its memory
# bandwidth 320 GB/s against 4,800: both ratios are about 1/15. Scaling the H200's time by that
# assumes the T4 reaches the same fraction of its peak, which batch-1 steps of a small model
# rarely do on either card: an optimistic estimate, not a measurement.

# %%
T4_SCALE = min(65 / 989, 320 / 4800)  # the T4's peak throughput and bandwidth over the H200's
estimates = pd.DataFrame({size: {"H200 min / 1,000 examples": 1000 * s / 60,
                                 "H200 h / 18,000 examples": 18000 * s / 3600,
                                 "T4 estimate min / 1,000 examples": 1000 * s / T4_SCALE / 60,
                                 "T4 estimate tokens/s at 1,024": gpu_runs[size]["by_seq"][-1]["tokens_per_second"]
                                 * T4_SCALE} for size, s in per_example.items()}).T
estimates.round(1)

# %% [markdown]
# The first step waits for torch.compile: unsloth compiles every decoder layer, and the graphs
# are cached on disk, so a second run on the same machine starts warmer. Fast DoRA's per-channel
# scale is a custom autograd Function, which torch's AOTAutograd cache skips unless told it is
# safe (`lib.fast_dora.allow_compile_cache`, called by `use_fast_dora`). Measured on an H100 for
# the 270M at this chapter's settings (stored with its provenance):

# %%
first_steps = read_json("data/measurements/unsloth-first-step-h100-2026-12-07.json")
print(f"{first_steps['provenance']['gpu']}, {first_steps['provenance']['date']}")
pd.DataFrame([{"run": r["run"], "first step (s)": r["first_step_seconds"], "s/step after": r["steady_seconds_per_step"],
               "graphs from the AOTAutograd cache": r["compilation"]["caches"].get("aot_autograd.autograd_cache_hit", 0),
               "graphs traced again (bypassed)": r["compilation"]["caches"].get("aot_autograd.autograd_cache_bypass", 0)}
              for r in first_steps["runs"]])

# %% [markdown]
# ## Claims ledger
#
# The source documents expect the loss to fall "from ~2.5 to ~0.8". Measured here as the mean
# of the first and of the last five logged losses (single batches are noisy):

# %%
from lib.claims import ClaimsLedger, ledger_table

losses = [entry["loss"] for entry in log]
window = min(5, len(losses))
start, end = sum(losses[:window]) / window, sum(losses[-window:]) / window
ledger = ClaimsLedger("04_trinity_training", run_dir)
ledger.measure("C17", f"{start:.2f} -> {end:.2f} over {len(losses)} steps (mean of first/last {window} steps; "
               f"{model_name}, {result.stats['tokens_this_session']:,} tokens)", "Loss and memory",
               {"start_loss": start, "end_loss": end}, note="depends on data, steps and model size; this is the default run's")
gpu_where = f"{claims_gpu['provenance']['gpu']}, {claims_gpu['provenance']['date']}, data/measurements/claims-gpu.json"
t4 = {size: run["by_seq"][-1]["tokens_per_second"] * T4_SCALE for size, run in gpu_runs.items()}
ledger.measure("C18", f"not measured on a T4. H200, batch 1 at 1,024 tokens: 4B {gpu_runs['4B']['by_seq'][-1]['tokens_per_second']:.0f}, "
               f"12B {gpu_runs['12B']['by_seq'][-1]['tokens_per_second']:.0f} tokens/s; T4 estimate (x{T4_SCALE:.3f}, peak "
               f"FLOP/s and bandwidth ratio): 4B {t4['4B']:.0f}, 12B {t4['12B']:.0f} tokens/s", "The same training on a GPU",
               {size: {"tokens_per_second": t4[size]} for size in t4}, where=gpu_where,
               proxy="a T4 estimate from H200 runs (optimistic: it scales by the peak ratios), not a measurement; "
                     "shorter sequences give fewer tokens/s")
minutes = {gpu: {size: 1000 * seconds / scale / 60 for size, seconds in per_example.items()}
           for gpu, scale in (("H200", 1.0), ("T4 estimate", T4_SCALE))}
ledger.measure("C23", "per 1,000 examples of this dataset (batch 1): " + "; ".join(
    f"{gpu} " + ", ".join(f"{size} {m:.0f} min" for size, m in sizes.items()) for gpu, sizes in minutes.items())
    + "; 27B not measured", "The same training on a GPU",
    {gpu: {f"minutes_{size.lower()}": m for size, m in sizes.items()} for gpu, sizes in minutes.items()},
    not_measured=("minutes_27b",), where=gpu_where, note="the source names no GPU")
ledger.measure("C30", f"18,000 examples of this dataset, one epoch, batch 1: H200 4B {18000 * per_example['4B'] / 3600:.1f} h, "
               f"12B {18000 * per_example['12B'] / 3600:.1f} h", "The same training on a GPU",
               {f"H200 {size}": {"hours": 18000 * seconds / 3600} for size, seconds in per_example.items()},
               where=gpu_where, note="batching or packing the short examples would cut it")
ledger_table(run_dir, only_measured=True).query("id in @ledger.claim_ids")  # the whole ledger: chapter 11

# %% [markdown]
# ## Summary

# %%
stats = result.stats
print(f"""{stats['steps']} steps of {batch_size} on {env.device} in {stats['compute_dtype']} ({chosen_backend}):
* loss {start:.2f} -> {end:.2f} (mean of the first and last {window} steps);
* {stats['tokens_per_second']} tokens/s, {stats['peak_memory_measure']} {stats['peak_memory_gib']:.2f} GiB
  ({stats['train_seconds_this_session']} s of training in this run);
* the adapter: {run_paths(run_dir)['adapter']} (peft format); chapter 06 measures what it learned on the test split.
* On an H200 the same Trinity trains this data at {1000 * per_example['4B'] / 60:.0f} min (4B) and
  {1000 * per_example['12B'] / 60:.0f} min (12B) per 1,000 examples at batch 1 (stored measurement).""")
