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
# # 1. Concepts: QLoRA, LoRA, rsLoRA and DoRA, measured on Gemma 3
#
# The Trinity stacks four ideas. Each is usually explained with an analogy and a number; here
# each is run on the real Gemma 3 270M weights (and, for memory and parameter counts, on the
# shapes of the 1B, 4B, 12B and 27B models), and every number comes from a cell below:
#
# 1. **QLoRA / NF4**: the frozen base weights are stored in 4 bits, in blocks of 64 values that
#    share one scale (absmax), with the scales themselves quantized again (double quantization).
# 2. **LoRA**: the model learns a low-rank update B·A (rank r) next to each frozen weight W.
# 3. **rsLoRA**: the update is scaled by alpha/sqrt(r) instead of alpha/r, so that a higher rank
#    can learn more instead of being scaled down.
# 4. **DoRA**: each output channel's length (magnitude) is learned apart from its direction.
#
# The chapter ends with the **claims ledger**: the source documents' numbers on these topics,
# beside what was measured. Later chapters add their measurements to the same ledger.

# %% tags=["parameters"]
model_name = "gemma-3-270m"          # embedded alias, local folder or hub id
dataset_dir = "data/python-stdlib"   # train/val/test .jsonl or .json
run_name = "default"                 # artifacts: <output_dir>/<run_name>/
output_dir = "output"
sweep_ranks = [4, 16, 64, 256]       # rank sweep: LoRA (alpha/r) and rsLoRA (alpha/sqrt(r)) at each
sweep_steps = 16                     # optimizer steps per short run
batch_size = 2
max_seq_length = 256
learning_rate = 2e-4                 # the same for every run, constant after 2 warm-up steps
alpha = 32
dora_rank = 64                       # the DoRA run, compared with the rsLoRA run of the same rank
track_every = 4                      # record magnitude/direction changes every N steps
table_ranks = [8, 16, 32, 64, 128, 256]
seed = 3407
compute_dtype = "auto"               # the short runs: "auto" (lib.precision: measured on a CPU), "bfloat16", "float32"
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
import torch
from lib.adapter_runs import start_server
from lib.artifacts import read_json
from lib.claims import ClaimsLedger, check, hardware, ledger_table
from lib.model import load_causal_lm, load_tokenizer, resolve_model

torch.manual_seed(seed)
run_dir = Path(output_dir) / run_name
ledger = ClaimsLedger("01_concepts", run_dir)
source = resolve_model(model_name)
start_server(model_name)  # section 3's short runs fork from it; it imports and loads while sections 1-2 run
tokenizer = load_tokenizer(source)
# float32 copy of the real weights: the reference every quantized version is compared with
model = load_causal_lm(source, torch.float32, load_in_4bit=False)
print(f"{source.name}: {sum(p.numel() for p in model.parameters()):,} parameters; measuring on {hardware()}")

# %% [markdown]
# ## 1. NF4 and double quantization
#
# QLoRA stores each weight matrix in blocks of 64 values. A block keeps its largest absolute
# value (absmax) in full precision, and each value becomes a 4-bit index into a table of 16
# levels in [-1, 1]: w ≈ level[index] × absmax. The question is which 16 levels.
#
# * **int4** (the plain baseline, written in torch in `lib.quantization.absmax_int4`): 15 evenly
#   spaced levels, -7/7 … 7/7.
# * **FP4**: a 4-bit floating-point grid (bitsandbytes).
# * **NF4** (NormalFloat): the quantiles of a normal distribution, so that each level is used
#   equally often when weights are normally distributed (bitsandbytes).
#
# Each of the 126 projection matrices of the model (18 layers × q, k, v, o, gate, up, down) goes
# through a 4-bit round trip with each method; the error is the relative Frobenius norm
# ‖W − Ŵ‖ / ‖W‖, aggregated per projection type.
#
# One caveat about "real weights" here: the embedded model ships as a Q4_K_M GGUF, so its weights
# already sit on llama.cpp's 4-bit grid (blocks of 32 with 6-bit scales) before NF4 sees them.
# The comparison between methods stays fair (all three quantize the same values), but the
# absolute errors would differ on the original bf16 checkpoint.

# %%
from lib.quantization import reconstruction_errors

errors = pd.DataFrame(reconstruction_errors(model))
by_type = errors.groupby(["module", "method"])[["error_sq", "norm_sq"]].sum()
relative = (by_type.error_sq / by_type.norm_sq).pow(0.5).unstack()[["nf4", "fp4", "int4"]]
overall = errors.groupby("method")[["error_sq", "norm_sq"]].sum()
overall = (overall.error_sq / overall.norm_sq).pow(0.5)
relative.loc["all 126 matrices"] = overall
relative.round(4)

# %%
from lib.plots import quantization_errors

quantization_errors(relative.drop(index="all 126 matrices"));
print(f"NF4's error is {overall['nf4'] / overall['int4']:.0%} of int4's and {overall['nf4'] / overall['fp4']:.0%} "
      f"of FP4's over all projection weights.")

# %% [markdown]
# Why NF4 wins: divide each weight by its block's absmax and look at the distribution the 16
# levels must cover. It is bell-shaped, concentrated near zero; NF4's levels (red) are dense
# where the weights are.

# %%
from lib.plots import normalized_weight_histogram
from lib.quantization import code_levels, normalized_by_block

weight = model.model.layers[0].mlp.down_proj.weight.detach()
normalized_weight_histogram(normalized_by_block(weight), code_levels("nf4"),
                            "layer 0 down_proj, normalized by block absmax, with NF4's 16 levels");

# %% [markdown]
# ### Bits per parameter actually stored
#
# 4-bit codes are not the whole story: every block of 64 also stores its absmax. In fp32 that is
# 32/64 = 0.5 extra bits per parameter. Double quantization stores those constants in 8 bits,
# with one fp32 constant per 256 blocks; the QLoRA paper (section 3) puts the overhead at
# 8/64 + 32/(64·256) ≈ 0.127 bits. Below, the bytes of every tensor bitsandbytes keeps for one
# real weight are counted.

# %%
from lib.quantization import stored_bits

bits = pd.DataFrame({"NF4": stored_bits(weight, double_quant=False),
                     "NF4 + double quant": stored_bits(weight, double_quant=True)}).T.fillna(0)
bits = bits[["codes", "absmax", "second-level constants", "code table", "total"]]
bits["QLoRA paper"] = [4 + 32 / 64, 4 + 8 / 64 + 32 / (64 * 256)]
bits.round(4)

# %% [markdown]
# ### The model in fp32, bf16 and NF4
#
# The same model is loaded four ways and the bytes it keeps are counted (parameters, buffers and
# the 4-bit layers' quantization constants; `get_memory_footprint` of transformers misses the
# constants). Only the projections are quantized: the embedding (tied with the output head) and
# the norms stay in 16 bits. That matters for Gemma 3, whose 262,144-token vocabulary makes the
# embedding 168 M of the 270M model's 268 M parameters.
#
# For the larger sizes the same accounting is applied to parameter counts computed from their
# configs (`lib.gemma3`), with the bits per parameter measured above.

# %%
from lib.gemma3 import GEMMA3_SHAPES, linear_parameter_share, parameter_counts
from lib.quantization import stored_bytes, weight_memory_gib

measured = {"fp32": stored_bytes(model) / 2**30}
for label, kwargs in {"bf16": dict(load_in_4bit=False), "NF4": dict(double_quant=False),
                      "NF4 + double quant": dict(double_quant=True)}.items():
    loaded = load_causal_lm(source, torch.bfloat16, **kwargs)
    measured[label] = stored_bytes(loaded) / 2**30
    del loaded


def weights_gib(size: str) -> dict:
    counts = parameter_counts(size)
    return {"fp32": weight_memory_gib(counts, 32, 32), "bf16": weight_memory_gib(counts, 16),
            "NF4": weight_memory_gib(counts, bits.loc["NF4", "total"]),
            "NF4 + double quant": weight_memory_gib(counts, bits.loc["NF4 + double quant", "total"]),
            "share in the 7 projections": linear_parameter_share(size)}


memory = pd.DataFrame({size: weights_gib(size) for size in GEMMA3_SHAPES}).T
memory.loc["270M measured"] = measured | {"share in the 7 projections": linear_parameter_share("270M")}
memory.round(3)

# %% [markdown]
# The 270M row computed from its config and the row measured on the loaded models should agree:
# that checks the accounting before it is applied to the sizes that do not fit here.

# %%
gib_12b = memory.loc["12B"]
saving_vs_bf16 = 1 - gib_12b["NF4 + double quant"] / gib_12b["bf16"]
ledger.measure("C02", f"12B text weights: fp32 {gib_12b['fp32']:.1f} GiB, bf16 {gib_12b['bf16']:.1f} GiB, "
               f"NF4 + double quant {gib_12b['NF4 + double quant']:.1f} GiB ({saving_vs_bf16:.0%} below bf16, "
               f"{1 - gib_12b['NF4 + double quant'] / gib_12b['fp32']:.0%} below fp32)", "NF4 and double quantization",
               {"weights_gib": gib_12b["NF4 + double quant"]},
               note="'48 GB' is the fp32 size; the embedding stays in bf16 under QLoRA")
print(f"12B: {gib_12b['fp32']:.1f} GiB fp32 -> {gib_12b['NF4 + double quant']:.1f} GiB NF4 + double quant")

# %% [markdown]
# ## 2. LoRA and rank
#
# LoRA freezes W (out × in) and learns B (out × r) and A (r × in), so each adapted matrix costs
# r·(in + out) trainable parameters instead of in·out. The table counts them for the Trinity's 7
# target modules in every layer, for each rank and Gemma 3 size, and their share of the model.

# %%
from lib.lora import adapter_parameters

rows = []
for size, shape in GEMMA3_SHAPES.items():
    total = parameter_counts(size)["total"]
    for r in table_ranks:
        n = adapter_parameters(shape.linear_shapes(), shape.num_hidden_layers, r)
        rows.append({"size": size, "rank": r, "trainable (M)": n / 1e6, "share of model (%)": 100 * n / total})
adapter_table = pd.DataFrame(rows)
adapter_table.pivot(index="size", columns="rank", values="trainable (M)").loc[list(GEMMA3_SHAPES)].round(1)

# %%
adapter_table.pivot(index="size", columns="rank", values="share of model (%)").loc[list(GEMMA3_SHAPES)].round(2)

# %% [markdown]
# The formula is checked against peft on the real model: wrap it with a rank-64 adapter on the 7
# modules and let peft count.

# %%
from lib.lora import TrinityConfig, trainable_parameters
from peft import get_peft_model

shape_270m = GEMMA3_SHAPES["270M"]
lora_model = get_peft_model(model, TrinityConfig(rank=64, alpha=alpha, use_dora=False).to_peft())
peft_count = trainable_parameters(lora_model)["trainable"]
formula_count = adapter_parameters(shape_270m.linear_shapes(), shape_270m.num_hidden_layers, 64)
print(f"r=64 on Gemma 3 270M: peft counts {peft_count:,} trainable parameters, the formula {formula_count:,}")
assert peft_count == formula_count

# %%
shape_12b = GEMMA3_SHAPES["12B"]  # the claim's rank, whichever ranks the table shows
trainable_12b = adapter_parameters(shape_12b.linear_shapes(), shape_12b.num_hidden_layers, 64)
share_12b = 100 * trainable_12b / parameter_counts("12B")["total"]
ledger.measure("C03", f"12B, r=64, 7 modules: {trainable_12b / 1e6:.1f} M trainable, {share_12b:.2f}% of the model",
               "LoRA and rank", {"trainable_millions": trainable_12b / 1e6, "share_percent": share_12b})
shares = {size: 100 * linear_parameter_share(size) for size in GEMMA3_SHAPES}
off = [size for size, share in shares.items() if check("C04", share_percent=share) != "holds"]
ledger.measure("C04", "share of parameters in the 7 target modules: "
               + ", ".join(f"{size} {share:.0f}%" for size, share in shares.items()), "LoRA and rank",
               {"share_percent": shares["12B"]}, note="the embedding's share shrinks as the model grows",
               caveat=f"not for {', '.join(off)}" if off else None)
square = adapter_parameters({"q_proj": (4096, 4096)}, 1, 64, target_modules=("q_proj",))
ledger.measure("C05", f"4096x4096 at r=64: {square:,} parameters, {1 - square / 4096**2:.1%} fewer",
               "LoRA and rank", {"parameters": square})

# %% [markdown]
# ### Output = W x + s · B A x, on one real layer
#
# peft initialises A randomly and B to zero, so at step 0 the adapted model computes exactly what
# the base model computes. Checked on layer 0's q_proj with a real prompt's hidden states, then
# with a random B, against the formula written out by hand (`lib.lora.lora_output_by_hand`).

# %%
from lib.lora import formula_check, lora_output_by_hand

prompt = tokenizer("def fibonacci(n):", return_tensors="pt")
q_proj = lora_model.base_model.model.model.layers[0].self_attn.q_proj
lora_check = formula_check(lora_model, q_proj, prompt, lora_output_by_hand)
pd.DataFrame([
    {"check": "B = 0: adapted logits vs base logits, max |difference|", "value": lora_check["zero_init_max_abs"]},
    {"check": "random B: peft's q_proj output vs W x + s·B·A x, max relative difference",
     "value": lora_check["formula_max_relative"]},
])

# %% [markdown]
# ## 3. rsLoRA: does a higher rank learn more?
#
# With LoRA's scaling s = alpha/r, doubling the rank halves the factor on B·A. The rsLoRA paper
# (Kalajdzievski 2023) argues that this makes higher ranks learn no faster (their extra capacity
# is scaled away), and that s = alpha/sqrt(r) keeps the learning rate of the update stable across
# ranks. The source documents go further: "without rsLoRA, r=64 diverges around step 20-30",
# "rsLoRA gives 4x more learning capacity".
#
# The sweep below trains short runs at each rank with both scalings: NF4 base, adapters on all 7
# modules, alpha = 32, the same learning rate, data and batch order in every run, each run in a
# fresh process (`lib.adapter_runs`). This is plain peft; the chapter 04 run uses unsloth where it
# imports, which implements the same formulas.

# %%
from lib.adapter_runs import SHORT_RUN, AdapterRun, run_in_fresh_process

short_run = SHORT_RUN.replace(model=model_name, alpha=alpha, max_steps=sweep_steps, batch_size=batch_size,
                              max_seq_length=max_seq_length, learning_rate=learning_rate, seed=seed,
                              compute_dtype=compute_dtype)
sweep = []
for rslora in (False, True):
    for r in sweep_ranks:
        name = f"{'rslora' if rslora else 'lora'}-r{r}"
        run = AdapterRun(name, short_run.replace(rank=r, use_rslora=rslora), dataset_dir, track_every=track_every)
        sweep.append(run_in_fresh_process(run, run_dir / "concepts" / name))
        print(f"{name}: {sweep[-1]['start_loss']:.3f} -> {sweep[-1]['end_loss']:.3f}")

# %%
from lib.plots import rank_sweep_curves, update_norm_by_rank

rank_sweep_curves(sweep);

# %%
update_norm_by_rank(sweep);

# %%
sweep_table = pd.DataFrame([{
    "scaling": "alpha/sqrt(r)" if r["run"]["use_rslora"] else "alpha/r", "rank": r["run"]["rank"],
    "s (peft)": r["peft_scaling"], "trainable (M)": r["trainable_parameters"] / 1e6,
    "loss, first quarter": r["start_loss"], "loss, last quarter": r["end_loss"], "loss drop": r["loss_drop"],
    "mean relative update": sum(u["relative_update"] for u in r["update_norms"]) / len(r["update_norms"]),
    "diverged": r["diverged"], "s/step": r["median_step_seconds"]} for r in sweep])
sweep_table.round(4)

# %% [markdown]
# Read the table by scaling. Under alpha/r, compare the loss drop of the highest rank with the
# lowest: the rsLoRA paper predicts no gain, or a loss, from the extra rank. Under alpha/sqrt(r)
# it predicts that higher ranks learn at least as fast. "diverged" means the loss of the last
# quarter of the run is above the first quarter's, or became non-finite.

# %%
def drop(rslora: bool, rank: int) -> float:
    return sweep_table.query(f"rank == {rank} and scaling == '{'alpha/sqrt(r)' if rslora else 'alpha/r'}'")[
        "loss drop"].iloc[0]

low, high = min(sweep_ranks), max(sweep_ranks)
lora_gain, rslora_gain = drop(False, high) - drop(False, low), drop(True, high) - drop(True, low)
print(f"alpha/r:       r={high} drops the loss {drop(False, high):.3f}, r={low} {drop(False, low):.3f} "
      f"(difference {lora_gain:+.3f})")
print(f"alpha/sqrt(r): r={high} drops the loss {drop(True, high):.3f}, r={low} {drop(True, low):.3f} "
      f"(difference {rslora_gain:+.3f})")
print("runs that diverged:", ", ".join(sweep_table.query("diverged").apply(
    lambda r: f"{r['scaling']} r={r['rank']}", axis=1)) or "none")

# %%
scalings = {r["run"]["rank"]: r["peft_scaling"] for r in sweep if r["run"]["use_rslora"]}
expected = {r: alpha / r**0.5 for r in scalings}
ledger.measure("C06", "peft's scaling with use_rslora: " + ", ".join(f"r={r}: {s:g}" for r, s in scalings.items())
               + f" (alpha={alpha})", "rsLoRA", {"max_scaling_error": max(abs(scalings[r] - expected[r]) for r in scalings)})
lora_64 = sweep_table.query("rank == 64 and scaling == 'alpha/r'")
if len(lora_64):
    diverged_64 = bool(lora_64["diverged"].iloc[0])
    ledger.measure("C07", f"r=64 with alpha/r over {sweep_steps} steps: loss {lora_64['loss, first quarter'].iloc[0]:.2f}"
                   f" -> {lora_64['loss, last quarter'].iloc[0]:.2f}, "
                   f"{'diverged' if diverged_64 else 'no divergence'}", "rsLoRA", {"r64_alpha_r_diverged": float(diverged_64)},
                   note="under alpha/r a higher rank gets a smaller factor: it learns slower, it does not blow up")
pairs = sweep_table.pivot(index="rank", columns="scaling", values="loss drop")
if 64 in pairs.index:
    ratio = pairs.loc[64, "alpha/sqrt(r)"] / pairs.loc[64, "alpha/r"]
    ledger.measure("C08", f"r=64, {sweep_steps} steps: rsLoRA's loss drop is {ratio:.1f}x LoRA's "
                   f"(its factor s is sqrt(64) = 8x larger)", "rsLoRA", {"loss_drop_ratio": ratio},
                   note="'capacity' is not defined by the source; measured as loss drop in a short run, same lr")

# %% [markdown]
# ## 4. DoRA: magnitude and direction
#
# DoRA writes each weight as a magnitude times a direction. peft takes the norm per output channel
# (each row of W, out × in): m = ‖W_i‖ is a vector of `out` numbers, and V = W / m has unit rows.
# Training learns m directly and the direction through LoRA:
#
# W' = m / ‖W + s·B·A‖ ⊙ (W + s·B·A), with m starting at ‖W‖ and B at zero, so W' = W at step 0.

# %%
from lib.dora import dora_output_by_hand, magnitude_and_direction

base_model = lora_model.unload()  # back to the plain model, then wrap it with DoRA
magnitude, direction = magnitude_and_direction(base_model.model.layers[0].self_attn.q_proj.weight)
print(f"layer 0 q_proj: W {tuple(direction.shape)}, m {tuple(magnitude.shape)} "
      f"(from {magnitude.min():.2f} to {magnitude.max():.2f}); rows of V have norm "
      f"{torch.linalg.norm(direction, dim=1).min():.6f}..{torch.linalg.norm(direction, dim=1).max():.6f}")
dora_model = get_peft_model(base_model, TrinityConfig(rank=64, alpha=alpha, use_dora=True).to_peft())
q_proj = dora_model.base_model.model.model.layers[0].self_attn.q_proj
dora_check = formula_check(dora_model, q_proj, prompt, dora_output_by_hand)
pd.DataFrame([
    {"check": "B = 0: DoRA logits vs base logits, max |difference|", "value": dora_check["zero_init_max_abs"]},
    {"check": "random B: peft's DoRA q_proj output vs m/||W+sBA|| (Wx + sBAx), max relative difference",
     "value": dora_check["formula_max_relative"]},
])

# %% [markdown]
# ### How LoRA and DoRA move magnitude and direction
#
# The DoRA paper (section 3) measures, for each layer and checkpoint, how far training moved the
# magnitudes (ΔM, mean |m − m₀| over output channels) and the directions (ΔD, mean 1 − cos) of a
# weight, and finds that full fine-tuning and DoRA change them in opposite directions (negative
# correlation across layers and steps), while LoRA changes both together (positive). Below, the
# rsLoRA run of rank 64 from the sweep is the LoRA run, and a DoRA run with the same settings is
# added; q_proj and v_proj of all 18 layers are recorded every `track_every` steps. The
# correlation is taken across the 36 layers at each recorded step: pooled over steps, both
# quantities grow with training time and would correlate positively for any method.

# %%
import numpy as np
from lib.dora import correlation_by_step

dora_spec = short_run.replace(rank=dora_rank, use_rslora=True, use_dora=True)
dora_run = run_in_fresh_process(AdapterRun(f"dora-r{dora_rank}", dora_spec, dataset_dir, track_every=track_every),
                                run_dir / "concepts" / f"dora-r{dora_rank}")
lora_run = next(r for r in sweep if r["run"]["rank"] == dora_rank and r["run"]["use_rslora"])


correlations = pd.DataFrame({"LoRA": correlation_by_step(lora_run["magnitude_direction"]),
                             "DoRA": correlation_by_step(dora_run["magnitude_direction"])})
correlations.index.name = "step"
last_step = correlations.dropna().index.max()
panels = {f"LoRA (rsLoRA, r={dora_rank})": (lora_run["magnitude_direction"], correlations.loc[last_step, "LoRA"]),
          f"DoRA (rsLoRA, r={dora_rank})": (dora_run["magnitude_direction"], correlations.loc[last_step, "DoRA"])}
correlations.round(3)

# %%
from lib.plots import magnitude_vs_direction

magnitude_vs_direction(panels);

# %% [markdown]
# ### What DoRA costs here, and what it gave
#
# Same run, DoRA on and off: median step time (forward, backward and optimizer; the first step
# left out), peak resident memory of the run's process, and the training loss.

# %%
cost = pd.DataFrame([{"adapter": name, "trainable (M)": r["trainable_parameters"] / 1e6,
                      "median s/step": r["median_step_seconds"], "peak RSS (GiB)": r["peak_memory_gib"],
                      "loss, last quarter": r["end_loss"]}
                     for name, r in (("LoRA", lora_run), ("DoRA", dora_run))]).set_index("adapter")
cost.loc["DoRA / LoRA"] = cost.loc["DoRA"] / cost.loc["LoRA"]
# Both runs see the same batches in the same order: step i of one compares with step i of the other.
paired = np.array(dora_run["step_seconds"][1:]) / np.array(lora_run["step_seconds"][1:])
print(f"DoRA/LoRA step time, median of the {len(paired)} paired steps: {np.median(paired):.2f}x "
      f"(range {paired.min():.2f}x-{paired.max():.2f}x: CPU step times are noisy)")
cost.round(3)

# %%
loss_change = 1 - dora_run["end_loss"] / lora_run["end_loss"]
ledger.measure("C09", f"{sweep_steps} steps, r={dora_rank}: DoRA's training loss {loss_change:+.1%} vs LoRA "
               "(lower is better)", "DoRA", {"gain_percent": 100 * loss_change},
               proxy="a short run's training loss; the claim is about downstream accuracy after full training")
memory_cost = dora_run["peak_memory_gib"] - lora_run["peak_memory_gib"]
ledger.measure("C10", f"270M, r={dora_rank}, seq {max_seq_length}, CPU: DoRA {memory_cost:+.2f} GiB peak RSS "
               f"({memory_cost / lora_run['peak_memory_gib']:+.0%}), "
               f"{np.median(paired):.2f}x step time (median of paired steps)", "DoRA", {"dora_extra_gib": memory_cost},
               proxy="a 270M model on a CPU; the claim is about 12B at 4096 tokens on a GPU (next row)")

# The 12B figure needs a GPU: a stored measurement on an H200 (provenance in the file).
anchor = read_json("data/measurements/gpu-anchor-h200.json")
runs_12b = {r["dora"]: r for r in anchor["runs"] if r["shape"] == "12B" and r["backend"] == "unsloth"}
extra = runs_12b[True]["peak_allocated_gib"] - runs_12b[False]["peak_allocated_gib"]
ledger.measure("C10", f"12B, r=64, seq 4096, unsloth: DoRA {extra:+.2f} GiB peak allocated "
               f"({extra / runs_12b[False]['peak_allocated_gib']:+.0%}), "
               f"{runs_12b[True]['seconds_per_step'] / runs_12b[False]['seconds_per_step']:.1f}x step time",
               "DoRA (stored GPU measurement)", {"dora_extra_gib": extra},
               where=f"{anchor['provenance']['hardware']}, {anchor['provenance']['date']}, "
                     "data/measurements/gpu-anchor-h200.json")

# %% [markdown]
# ## 5. Optimizer states: 32-bit vs 8-bit AdamW
#
# AdamW keeps two running averages per trainable parameter. In fp32 that is 8 bytes per
# parameter; bitsandbytes' 8-bit AdamW stores them in 8 bits with a scale per block. Only the
# adapter is trained, so only the adapter has optimizer state. One optimizer step on the real
# rank-64 adapter, and the state tensors counted:

# %%
import bitsandbytes as bnb
from lib.memory import optimizer_state_bytes

adapter_params = [p for p in dora_model.parameters() if p.requires_grad]
for p in adapter_params:
    p.grad = torch.randn_like(p)
state_bytes = {}
for name, optimizer_class in (("AdamW (32-bit)", torch.optim.AdamW), ("AdamW8bit", bnb.optim.AdamW8bit)):
    optimizer = optimizer_class(adapter_params, lr=1e-6)
    optimizer.step()
    state_bytes[name] = optimizer_state_bytes(optimizer)
    del optimizer
n_adapter = sum(p.numel() for p in adapter_params)
states = pd.DataFrame({"state MiB": {k: v / 2**20 for k, v in state_bytes.items()},
                       "bytes per trainable parameter": {k: v / n_adapter for k, v in state_bytes.items()}})
saving = 1 - state_bytes["AdamW8bit"] / state_bytes["AdamW (32-bit)"]
adapter_12b = adapter_parameters(GEMMA3_SHAPES["12B"].linear_shapes(), GEMMA3_SHAPES["12B"].num_hidden_layers, 64,
                                 use_dora=True)
ledger.measure("C15", f"8-bit AdamW state {saving:.0%} smaller on the r=64 DoRA adapter; for 12B r=64 the 32-bit "
               f"states are {adapter_12b * 8 / 2**30:.1f} GiB -> ~{adapter_12b * 8 * (1 - saving) / 2**30:.1f} GiB",
               "Optimizer states", {"saving_percent": 100 * saving},
               note="'8 GB -> 2 GB' does not hold: LoRA's states are ~2 GB in 32-bit. Quality not measured here")
states.round(3)

# %% [markdown]
# ## Claims ledger
#
# Each quantitative claim of the source documents, the value this course measured, where, and a
# verdict computed in the cells above: where a claim states a number, the number, its unit and
# the tolerance it is held to sit in `data/claims/source-claims.json`, and `lib.claims.check`
# gives the verdict, so no threshold is written in a chapter. Claims that later chapters measure (training speed, memory
# on a GPU, export quality, …) show as "not measured yet" here and fill in as the book goes on;
# the last chapter's ledger holds them all.

# %%
pd.set_option("display.max_colwidth", None)
ledger_table(run_dir).style.hide(axis="index")
