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
# # 10. Beyond one fixed low-rank adapter: ReLoRA, rank-1 merging, blending
#
# A LoRA adapter of rank r can only ever add a rank-r change to each weight. Three ways past that,
# each built in `lib` and run here against plain LoRA on the same data, steps and seed:
#
# * **ReLoRA** (Lialin et al. 2023, arXiv 2307.05695): merge the adapter into the base every N
#   steps and start a fresh one, so the merged changes add up to more than rank r
#   (`lib.relora`).
# * **Dynamic rank-1 merging**: the extreme case, a rank-1 adapter merged every k steps.
# * **LoRA blending**: two adapters trained on different tasks (chapter 04's Python code, chapter
#   08's SQL schemas) combined into one with peft's `add_weighted_adapter`, and both served from one
#   base (`lib.blending`).
#
# Every training run is a short run of `lib.adapter_runs` in a fresh process (so its memory is its
# own), on chapter 04's data. ReLoRA merges additive updates, so these runs use LoRA with rsLoRA,
# DoRA off.

# %% tags=["parameters"]
model_name = "gemma-3-270m"          # embedded alias, local folder or hub id
run_name = "default"                 # chapter 04's and 08's run: <output_dir>/<run_name>/
output_dir = "output"
compute_dtype = "auto"               # "auto" (lib.precision: measured on a CPU), "bfloat16" or "float32"
steps = 24                           # every training run
batch_size = 2
max_seq_length = 256
learning_rate = 2e-4
lora_rank = 64                       # plain LoRA at the Trinity's rank
relora_rank = 16
relora_every = 8                     # steps between merges
relora_prune = 0.99                  # share of the optimizer state zeroed at a merge (the paper's)
relora_warmup = 3                    # re-warm-up steps after a merge
rank1_merge_every = [1, 4, 12]       # dynamic rank-1 merging: merge every k steps
eval_records = 16                    # test records for each run's response loss
blend_weights = [0.25, 0.5, 0.75]    # weight of the code adapter (the SQL adapter gets 1 - w)
blend_methods = ["linear", "cat", "svd", "ties", "dare_ties", "magnitude_prune"]
blend_eval_records = 4               # test records per task for each blend
ghost_adapter = "ghost-ocr"          # chapter 08's OCR-trained text adapter, under <run_name>/
seed = 3407
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
import time

import pandas as pd
from lib.adapter_runs import SHORT_RUN, AdapterRun, run_in_fresh_process, start_server
from lib.environment import validate_environment

started = time.monotonic()
start_server(model_name)  # the short runs' fork server imports and loads while this cell checks the machine
env = validate_environment(compute_dtype)
run_dir = Path(output_dir) / run_name
runs_dir = run_dir / "beyond-lora"
short_run = SHORT_RUN.replace(model=model_name, max_steps=steps, batch_size=batch_size, max_seq_length=max_seq_length,
                              learning_rate=learning_rate, seed=seed, use_rslora=True, alpha=32, warmup_steps=2,
                              compute_dtype=compute_dtype)
measure = dict(track_every=0, eval_records=eval_records)
relora = dict(relora_every=relora_every, relora_prune=relora_prune, relora_warmup=relora_warmup)
print(f"{env.device}, {env.compute_dtype}: {steps} steps of batch {batch_size} at {max_seq_length} tokens per run")

# %% [markdown]
# ## 1. ReLoRA against LoRA, on the course's NF4 base
#
# Three runs: LoRA at r = 64, LoRA at r = 16, and ReLoRA at r = 16 merging every
# `relora_every` steps. On the 4-bit base each merge dequantizes the weight, adds the update and
# quantizes it again; the re-quantization error of every merge is recorded.

# %%
nf4_runs = {
    f"LoRA r={lora_rank}": AdapterRun(f"lora-r{lora_rank}", short_run.replace(rank=lora_rank), **measure),
    f"LoRA r={relora_rank}": AdapterRun(f"lora-r{relora_rank}", short_run.replace(rank=relora_rank), **measure),
    f"ReLoRA r={relora_rank}": AdapterRun(f"relora-r{relora_rank}", short_run.replace(rank=relora_rank), **measure,
                                          **relora),
}
results = {name: run_in_fresh_process(run, runs_dir / run.name) for name, run in nf4_runs.items()}

# %%
from lib import plots


def summary_row(name, result):
    merges = result.get("merges", [])
    return {"run": name, "trainable (M)": result["trainable_parameters"] / 1e6, "final loss": result["end_loss"],
            "test loss": result["test_loss"]["loss"], "train s": result["train_seconds"],
            "median s/step": result["median_step_seconds"], "peak RSS GiB": result["peak_memory_gib"],
            "merges": len(merges), "merge s (all)": sum(m["merge_seconds"] for m in merges),
            "re-quantization error (median)": merges[0]["requantization_error_median"] if merges else None}


plots.loss_curves({n: r["log"] for n, r in results.items()}, title="NF4 base");
pd.DataFrame([summary_row(n, r) for n, r in results.items()]).set_index("run").round(4)

# %% [markdown]
# The re-quantization error is ||Q(W + ΔW) − (W + ΔW)|| / ||ΔW||: how much of each merged update
# the 4-bit grid does not keep. Below 1 the grid keeps part of the update; near 1 the update is
# mostly below the grid's resolution (an NF4 step is about a tenth of a block's largest weight,
# a short run's update far smaller), so ReLoRA on a 4-bit base can lose what it merges.
#
# ## 2. Does the total update exceed rank r?
#
# The same comparison on a float32 base, where W_end − W_0 holds only what training added (on NF4
# it would also hold full-rank quantization noise). The rank of W_end − W_0 of two projections of
# every layer, by three measures: effective rank, stable rank, and singular values above 1% of the
# largest. Dynamic rank-1 merging runs here too.

# %%
float_base = short_run.replace(precision="fp32", compute_dtype="float32")
ranked = dict(measure, total_update_modules=("q_proj", "down_proj"))
float_runs = {
    f"LoRA r={relora_rank}": AdapterRun(f"f32-lora-r{relora_rank}", float_base.replace(rank=relora_rank), **ranked),
    f"ReLoRA r={relora_rank}": AdapterRun(f"f32-relora-r{relora_rank}", float_base.replace(rank=relora_rank), **ranked,
                                          **relora),
    "LoRA r=1": AdapterRun("f32-lora-r1", float_base.replace(rank=1), **ranked),
    **{f"rank-1, merge every {k}": AdapterRun(f"f32-rank1-every{k}", float_base.replace(rank=1), **ranked,
                                             relora_every=k, relora_prune=1.0, relora_warmup=0)
       for k in rank1_merge_every},
}
float_results = {name: run_in_fresh_process(run, runs_dir / run.name) for name, run in float_runs.items()}

# %%
def rank_row(name, result):
    ranks = pd.DataFrame(result["total_update_ranks"])
    return summary_row(name, result) | {"adapter rank": ranks["adapter_rank"].iloc[0],
                                        "effective rank of W_end - W_0": ranks["effective_rank"].mean(),
                                        "stable rank": ranks["stable_rank"].mean(),
                                        "rank (> 1% of max)": ranks["rank_above_1pct"].mean()}


rank_table = pd.DataFrame([rank_row(n, r) for n, r in float_results.items()]).set_index("run")
plots.loss_curves({n: r["log"] for n, r in float_results.items()}, title="float32 base");
rank_table.drop(columns=["re-quantization error (median)"]).round(3)

# %% [markdown]
# Successive rank-1 updates: the angle between the direction each merged update wrote (the column
# of B) and the one before, for the first layer's q_proj and down_proj. Near 90° means each step
# explores a new direction; near 0° it keeps pushing the same one, and the sum stays low-rank.

# %%
angles = []
for name, result in float_results.items():
    for merge in result.get("merges", []):
        for layer, angle in merge.get("smallest_angle_to_previous_deg", {}).items():
            angles.append({"run": name, "step": merge["step"], "layer": layer, "angle": angle})
angles = pd.DataFrame(angles, columns=["run", "step", "layer", "angle"])
angles.groupby(["run", "layer"])["angle"].agg(["count", "mean", "min", "max"]).round(1)

# %% [markdown]
# And how the merged updates add up: the effective rank of the accumulated change of the same two
# layers, W − W_0, after each merge, against where plain LoRA ends.

# %%
growth = {name: [(m["step"], sum(m["accumulated_effective_rank"].values()) / len(m["accumulated_effective_rank"]))
                 for m in result.get("merges", []) if m.get("accumulated_effective_rank")]
          for name, result in float_results.items() if result.get("merges")}
final = {name: pd.DataFrame(result["total_update_ranks"]).query("layer == 0")["effective_rank"].mean()
         for name, result in float_results.items() if not result.get("merges")}
plots.accumulated_rank(growth, final);

# %% [markdown]
# ## 3. Blending two adapters
#
# Chapter 04's adapter writes Python functions, chapter 08's writes SQL schemas from screen text.
# Both are Trinity (DoRA) adapters on the same NF4 base. A blend with weight w gives the code
# adapter w and the SQL adapter 1 − w; each blend is scored on both tasks by the response loss of
# held-out records (teacher forcing).

# %%
import torch
from lib.artifacts import write_json
from lib.blending import adapter_bytes, blend, blend_effective, load_adapters, switch_cost
from lib.data import load_prepared
from lib.evaluation import response_loss
from lib.ghost_dataset import load_examples, text_records
from lib.model import load_causal_lm, load_tokenizer, resolve_model
from lib.training import run_paths

source = resolve_model(model_name)
tokenizer = load_tokenizer(source)
code_test = load_prepared(run_dir / "data")["test"][:blend_eval_records]
ddl_test = text_records(load_examples(run_dir / "ghost-data"), "test", run_dir / "ghost-data", "ocr")[:blend_eval_records]
adapters = {"code": run_paths(run_dir)["adapter"], "sql": run_paths(run_dir / ghost_adapter)["adapter"]}
model = load_adapters(load_causal_lm(source, env.compute_dtype), adapters)
model.eval()
print("; ".join(f"{name} adapter: {path}" for name, path in adapters.items())
      + f"; scored on {len(code_test)} code and {len(ddl_test)} SQL test records")


def scores(adapter):
    model.set_adapter(adapter)
    with torch.no_grad():
        return {"code loss": response_loss(model, tokenizer, code_test)["loss"],
                "SQL loss": response_loss(model, tokenizer, ddl_test)["loss"]}


blends = [{"method": "code adapter", "w": 1.0, **scores("code")}, {"method": "SQL adapter", "w": 0.0, **scores("sql")}]
refused = {}
for method in blend_methods:
    for w in blend_weights:
        name = f"{method}-w{round(100 * w)}"  # peft adapter names: no dots
        reason = blend(model, ["code", "sql"], [w, 1 - w], method, name)
        if reason:
            refused[method] = reason
            break
        blends.append({"method": method, "w": w, **scores(name)})
        model.set_adapter("code")  # peft warns when the active adapter is deleted
        model.delete_adapter(name)
both_ranks = model.peft_config["code"].r + model.peft_config["sql"].r  # the rank "cat" gives too
for w in blend_weights:
    name = f"effective-w{round(100 * w)}"
    kept = blend_effective(model, ["code", "sql"], [w, 1 - w], name, rank=both_ranks)
    blends.append({"method": "effective (SVD of W' - W)", "w": w, **scores(name), "energy kept": kept["energy_kept_median"]})
    model.set_adapter("code")
    model.delete_adapter(name)
write_json(run_dir / "metrics" / "blends.json", {"adapters": {k: str(v) for k, v in adapters.items()},
                                                  "refused": refused, "blends": blends})
blends = pd.DataFrame(blends)
print("refused:", refused or "none")
plots.blend_tradeoff(blends);
blends.round(3)

# %% [markdown]
# peft's `add_weighted_adapter` combines the A and B matrices only: the blended adapter gets DoRA
# magnitudes computed afresh from the base weights, so what either DoRA adapter learned in its
# magnitudes is gone, even at weight 1. `lib.blending.blend_effective` blends what each adapter
# actually does to each weight (W' − W, magnitudes included) and stores the sum as a plain LoRA
# adapter of the two ranks' sum by truncated SVD ("energy kept": the share of the summed change that rank
# keeps).
#
# ## 4. Serving both from one base
#
# One base in memory, both adapters loaded, `set_adapter` per request:

# %%
prompt = torch.tensor([tokenizer.apply_chat_template(code_test[0].messages[:-1], add_generation_prompt=True,
                                                     tokenize=True, return_dict=True)["input_ids"]])
serving = pd.DataFrame(switch_cost(model, ["code", "sql"], prompt))
serving["adapter MiB"] = [adapter_bytes(model, n) / 2 ** 20 for n in serving["adapter"]]
serving.round(4)

# %% [markdown]
# ## The source's ReLoRA numbers

# %%
from lib.claims import ClaimsLedger, ledger_table

ledger = ClaimsLedger("10_beyond_lora", run_dir)
lora, relora = results[f"LoRA r={lora_rank}"], results[f"ReLoRA r={relora_rank}"]
saved_gib = lora["peak_memory_gib"] - relora["peak_memory_gib"]
ledger.measure("C31", f"peak RSS ReLoRA r={relora_rank} {relora['peak_memory_gib']:.2f} GiB vs LoRA r={lora_rank} "
               f"{lora['peak_memory_gib']:.2f} GiB ({saved_gib:+.2f} GiB saved)", "1. ReLoRA against LoRA",
               {"ram_saved_gib": saved_gib},
               note="the paper's savings are against full-rank training of 250M-1.3B models on GPUs; against LoRA at "
                    "equal steps the saving can only be the smaller adapter's, which a LoRA of the same rank also has")
same_rank = results[f"LoRA r={relora_rank}"]
speedup = lora["median_step_seconds"] / relora["median_step_seconds"] - 1             # against the Trinity's rank
speedup_same = same_rank["median_step_seconds"] / relora["median_step_seconds"] - 1   # against LoRA of its own rank
ledger.measure("C32", f"median step {relora['median_step_seconds']:.2f} s (ReLoRA r={relora_rank}) vs "
               f"{lora['median_step_seconds']:.2f} s (LoRA r={lora_rank}): {100 * speedup:+.0f}%; vs "
               f"{same_rank['median_step_seconds']:.2f} s (LoRA r={relora_rank}): {100 * speedup_same:+.0f}%; merges add "
               f"{sum(m['merge_seconds'] for m in relora['merges']):.1f} s over {steps} steps", "1. ReLoRA against LoRA",
               {"speedup_percent": 100 * speedup_same},
               note="the paper compares with full-rank training on GPUs; the verdict compares with LoRA of ReLoRA's own "
                    "rank, so that a gain from the lower rank is not counted as one from merging")
ledger_table(run_dir, only_measured=True).query("id in ('C31', 'C32')")

# %% [markdown]
# ## Summary

# %%
from IPython.display import display

overview = pd.concat([pd.DataFrame([summary_row(n, r) for n, r in results.items()]).assign(base="NF4"),
                      rank_table.reset_index().assign(base="float32")])
columns = ["run", "base", "final loss", "test loss", "effective rank of W_end - W_0", "train s", "peak RSS GiB"]
best_blend = blends[blends["method"] != "code adapter"].assign(
    total=lambda t: t["code loss"] + t["SQL loss"]).sort_values("total").iloc[0]
display(overview[columns].round(3))
effective = rank_table["effective rank of W_end - W_0"]
rank1 = "; ".join(f"rank-1 merged every {k}: {effective[f'rank-1, merge every {k}']:.1f}" for k in rank1_merge_every)
best = overview.sort_values("test loss").groupby("base").first()["run"]
print(f"""Measured in {time.monotonic() - started:.0f} s ({env.device}, {env.compute_dtype}; rank analysis in float32):
* lowest test loss: {best['NF4']} on the NF4 base, {best['float32']} on the float32 base;
* ReLoRA r={relora_rank} vs LoRA r={relora_rank} (NF4): test loss {relora['test_loss']['loss']:.3f} vs {results[f'LoRA r={relora_rank}']['test_loss']['loss']:.3f}; LoRA r={lora_rank}: {lora['test_loss']['loss']:.3f};
  each NF4 merge kept its update up to a median re-quantization error of {relora['merges'][0]['requantization_error_median']:.2f} (of the update's norm);
* total update rank (effective, q_proj/down_proj, float32 base): ReLoRA r={relora_rank} {effective[f'ReLoRA r={relora_rank}']:.1f}, LoRA r={relora_rank} {effective[f'LoRA r={relora_rank}']:.1f}, LoRA r=1 {effective['LoRA r=1']:.1f}{'; ' + rank1 if rank1 else ''};
* blending: the lowest summed loss is {best_blend['method']} at w={best_blend['w']} (code {best_blend['code loss']:.3f}, SQL {best_blend['SQL loss']:.3f}; the adapters alone: code {blends.iloc[0]['code loss']:.3f}, SQL {blends.iloc[1]['SQL loss']:.3f}); refused: {', '.join(refused) or 'none'};
* serving two adapters on one base: set_adapter takes {serving['set_adapter_ms'].max():.2f} ms, each adapter {serving['adapter MiB'].mean():.0f} MiB.""")

# %% [markdown]
# **What to use when.** For a fine-tune of this length, one fixed adapter (plain LoRA in these
# runs, the Trinity elsewhere in the course) is the reference the table above measures the others
# against. ReLoRA exists for long runs in which a
# rank-r update is what limits learning: section 2 shows its merged updates really exceed rank r,
# but on a 4-bit base each merge is mostly lost to the NF4 grid (the re-quantization error of
# section 1), so it needs a float or bf16 base, and memory to hold one. Rank-1 merging is the same
# mechanism taken to its limit: the more often it merges, the higher the rank of what it
# accumulates. To serve several tasks, keep the adapters apart on one base and switch per request
# (section 4); to fold them into one, blend the effective weight changes: peft's blends of A and B
# lose what DoRA adapters learned in their magnitudes.

