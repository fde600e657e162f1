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
# # 9. Inside Gemma 3: what it is made of, and what fine-tuning changed in it
#
# The earlier chapters treat the model as a box that a Trinity adapter is attached to. This one
# opens it, on the real Gemma 3 270M weights and chapter 04's adapter, and answers by measurement:
#
# 1. **The stack.** Gemma 3 alternates five sliding-window ("local") attention layers with one
#    global layer. What that buys in KV-cache memory, exactly from the shapes for 270M-27B, and
#    measured for the 270M.
# 2. **Attention on real text.** How far local and global layers look, and what a layer loses when
#    its span is cut (or gains when it is opened): can the 5:1 ratio go further?
# 3. **Where the fine-tune went.** Per layer and module: the size of the learned update, how much
#    of rank 64 it uses, how far each layer's hidden states drifted, where the gradients flowed,
#    and whether the model memorized its training records.
# 4. **Capacity.** How many bits a parameter stores (Morris et al. 2025), measured on random data
#    with small Gemma 3 models trained from scratch and with LoRA adapters.

# %% tags=["parameters"]
model_name = "gemma-3-270m"          # embedded alias, local folder or hub id
run_name = "default"                 # chapter 04's run: <output_dir>/<run_name>/ (its data and adapter)
output_dir = "output"
compute_dtype = "auto"               # "auto" (lib.precision: measured on a CPU), "bfloat16" or "float32"
context_lengths = [512, 1024, 2048]  # real-text lengths for the KV cache and attention; the longest > the window (512)
span_blocks = 2                      # real-text blocks of the longest length for the span experiments
span_test_limit = 32                 # test records for the span experiments' response loss (None: all)
short_window = 128                   # a window below the test records' lengths (they are all under the real one)
drift_records = 16                   # test conversations for the hidden-state drift
own_train_records = 24               # the chapter's own short run: this many training records ...
own_max_steps = 24                   # ... for this many steps (4 epochs: room to memorize)
own_batch_size = 4
held_out_every = 8                   # steps between train / validation / test loss measurements
held_out_records = 12                # records per set for those measurements and the membership test
max_seq_length = 384
rank = 64                            # the own run's Trinity adapter (chapter 04's settings)
alpha = 32
capacity_hidden_sizes = [16, 32, 48] # small random-init Gemma 3 models trained on random sequences
capacity_dataset_multiples = [0.5, 1.0, 2.0]  # dataset bits as multiples of 3.6 bits x parameters
capacity_steps = 1500
capacity_lora_ranks = [2, 8, 32]     # LoRA adapters on the largest small model's frozen random weights
real_lora_ranks = [4, 16]            # LoRA on the real 270M, memorizing random sequences
real_lora_sequences = 16
real_lora_steps = 24
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
import torch
from lib.data import load_prepared
from lib.environment import validate_environment
from lib.model import load_causal_lm, load_tokenizer, resolve_model

started = time.monotonic()
env = validate_environment(compute_dtype)
run_dir = Path(output_dir) / run_name
splits = load_prepared(run_dir / "data")
source = resolve_model(model_name)
tokenizer = load_tokenizer(source)
base = load_causal_lm(source, env.compute_dtype, load_in_4bit=False).eval()  # the real weights, not NF4
print(f"{model_name} in {env.compute_dtype} on {env.device}; test records: {len(splits['test'])}")

# %% [markdown]
# ## 1. The stack, from the real config
#
# Each decoder layer's kind, sliding window and rotary-embedding (RoPE) base are read from the
# model's own config; for the larger sizes from their published configs (`lib.gemma3`).

# %%
from lib import plots
from lib.attention import layer_kinds
from lib.gemma3 import GEMMA3_SHAPES, rope_settings, shape_of

config = base.config
kinds = layer_kinds(base)
assert kinds == list(config.layer_types)
own = shape_of(config)
rope = rope_settings(config)
stacks = {"270M (this model)": kinds} | {name: s.layer_types() for name, s in GEMMA3_SHAPES.items() if name != "270M"}
windows = {"270M (this model)": config.sliding_window} | {name: s.sliding_window for name, s in GEMMA3_SHAPES.items()}
plots.layer_pattern(stacks, windows);

# %%
architecture = pd.DataFrame([{
    "model": name, "layers": s.num_hidden_layers, "global layers": s.layer_types().count("full_attention"),
    "window": s.sliding_window, "heads": s.num_attention_heads, "KV heads": s.num_key_value_heads,
    "head_dim": s.head_dim, "RoPE base global": s.rope_theta_global, "RoPE base local": s.rope_theta_local,
    "global RoPE scaling": s.rope_scaling_global, "context": s.max_position_embeddings}
    for name, s in {"270M (config)": own, **{k: v for k, v in GEMMA3_SHAPES.items() if k != "270M"}}.items()])
architecture

# %% [markdown]
# Local layers use RoPE base 10,000: their positions never exceed the window, and a small base
# resolves short distances well. Global layers use 1,000,000, so that positions 128K apart still
# rotate distinctly; in 4B-27B they are also linearly interpolated by 8 (trained at 32K, run at
# 128K, the technical report's section 2.3). 270M and 1B have a 32K context and a 512-token window.
#
# ## 2. What the pattern saves: the KV cache
#
# During generation every layer keeps the keys and values of the tokens it can still attend to:
# a global layer all of them, a local one the last window (`lib.gemma3.kv_cache_bytes`). For one
# sequence in bfloat16, against the same model with every layer global:

# %%
from lib.gemma3 import kv_cache_comparison

rows = [{"model": name} | kv_cache_comparison(s, tokens) for name, s in GEMMA3_SHAPES.items()
        for tokens in (8_192, 32_768, 131_072) if tokens <= s.max_position_embeddings]
kv = pd.DataFrame(rows)
plots.kv_cache_by_context(kv);
kv.round(3)

# %% [markdown]
# "Share of memory" is the KV cache over weights + KV cache (bf16 weights, one sequence): the
# quantity the technical report's figure 5 plots at 32K tokens, and the one the source's
# "from 60% to <15%" refers to. Measured on the 270M: the cache transformers actually keeps after
# a prefill of real text, against the formula:

# %%
from lib.attention import cache_bytes, source_blocks
from lib.gemma3 import kv_cache_bytes
from lib.stdlib_dataset import stdlib_modules

test_modules = {r.meta.get("module") for r in splits["test"]}
module_paths = dict(stdlib_modules())
long_texts = [module_paths[m].read_text(encoding="utf-8") for m in sorted(test_modules) if m in module_paths]
long_texts.sort(key=len, reverse=True)  # the longest held-out modules first: whole blocks of real code
bytes_per_value = torch.finfo(env.compute_dtype).bits // 8
measured_cache = []
for tokens in context_lengths:
    block = source_blocks(tokenizer, long_texts, tokens, 1)
    measured_cache.append({"tokens": tokens, "measured_mib": cache_bytes(base, block) / 2 ** 20,
                           "formula_mib": kv_cache_bytes(own, tokens, bytes_per_value, kinds) / 2 ** 20,
                           "all_global_mib": kv_cache_bytes(own, tokens, bytes_per_value,
                                                            ["full_attention"] * len(kinds)) / 2 ** 20})
measured_cache = pd.DataFrame(measured_cache)
measured_cache.round(2)

# %% [markdown]
# ## 3. Attention on real text
#
# Below, one real test-split prompt: the head-averaged attention of the first layer (local) and
# the first global layer. Then two statistics per layer over long real text (held-out standard
# library modules, `lib.attention`): the **mean attention distance** (how many tokens back the
# attention mass sits) and the **entropy** (how spread it is), at several context lengths, counted
# on the queries past the window, where a local layer cannot see everything.

# %%
from lib.attention import attention_map, attention_statistics
from lib.data import tokenize_conversation

first_global = kinds.index("full_attention")
prompt = torch.tensor([tokenize_conversation(tokenizer, splits["test"][0].messages)["input_ids"]])
maps = {f"layer {i} ({kinds[i].split('_')[0]})": attention_map(base, prompt, i).numpy() for i in (0, first_global)}
plots.attention_maps(maps, config.sliding_window);

# %%
stats = []
for tokens in context_lengths:
    block = source_blocks(tokenizer, long_texts, tokens, 1)
    min_query = min(config.sliding_window, tokens // 2)  # past the window where the text is long enough
    stats += [s.__dict__ for s in attention_statistics(base, block, min_query=min_query)]
stats = pd.DataFrame(stats)
plots.attention_by_layer(stats);
stats.groupby(["tokens", "kind"])[["mean_distance", "entropy_bits"]].mean().round(2)

# %% [markdown]
# ## 4. Can the 5:1 ratio go further?
#
# `lib.attention.attention_span` changes which keys a layer may see, at inference, without
# touching its weights or its RoPE: only the mask. Each change is scored by the loss it costs
# against the KV cache it saves. On the test split every conversation is shorter than the
# 512-token window, so windowing a global layer there can change nothing; the first row checks
# exactly that, and a shorter counterfactual window shows what the global layers carry at these
# lengths. Long real text then asks the question where the window binds.

# %%
from lib.attention import span_cost, spans_for

global_layers = [i for i, k in enumerate(kinds) if k == "full_attention"]
local_layers = [i for i, k in enumerate(kinds) if k == "sliding_attention"]
longest = max(context_lengths)
window = config.sliding_window
on_test = {"records": splits["test"][:span_test_limit], "tokenizer": tokenizer}
on_code = {"blocks": source_blocks(tokenizer, long_texts, longest, span_blocks)}
long_text = f"held-out code, {longest:,} tokens"


def score(change, spans, evaluated_on):
    scored_on = on_test if evaluated_on == "test split" else on_code
    return {"change": change, "evaluated_on": evaluated_on} | span_cost(base, spans, window, **scored_on)


span_rows = []
for where in ("test split", long_text):
    span_rows.append(score("as built", {}, where))
    span_rows.append(score(f"all global -> window {window}", spans_for(kinds, global_layers, window=window), where))
span_rows.append(score(f"all global -> window {short_window}",
                       spans_for(kinds, global_layers, window=short_window), "test split"))
span_rows.append(score(f"all local -> window {short_window}", {i: short_window for i in local_layers}, "test split"))
for layer in global_layers:
    span_rows.append(score(f"layer {layer} -> window {window}", spans_for(kinds, [layer], window=window), long_text))
span_rows.append(score("all local -> global", spans_for(kinds, make_local_global=local_layers), long_text))
spans = pd.DataFrame(span_rows)
spans["loss_delta"] = spans["loss"] - spans.groupby("evaluated_on")["loss"].transform("first")
plots.span_tradeoff(spans);
windowed = spans[(spans.evaluated_on != "test split") & (spans.change == f"all global -> window {window}")].iloc[0]
print(f"Windowing all {len(global_layers)} global layers at {longest:,} tokens: loss {windowed.loss_delta:+.4f} "
      f"nats/token ({100 * windowed.loss_delta / windowed.loss:+.2f}%) for {100 * windowed.kv_saved_share:.0f}% less "
      f"KV cache: " + ("the ratio can go further at this length, at no measurable cost" if abs(windowed.loss_delta) < 0.005
                      else "the global layers carry information from beyond the window; the ratio cannot go to "
                           "all-local without that loss"))
spans.round(4)

# %% [markdown]
# The KV saving is counted at the evaluated length (the longest test conversation, or the block
# length); at 32K tokens the same changes save more (section 2's table), and the loss cost grows
# with the distance the hidden keys span.
#
# ## 5. Where the fine-tune went
#
# Chapter 04's adapter, loaded on the NF4 base it was trained on. For every layer and module:
# the size of the update relative to the weight, and its singular values: **effective rank**
# (Roy & Vetterli 2007: exp of the entropy of the normalized singular values), **stable rank**
# (||ΔW||_F² / ||ΔW||_2²), and the energy in the top 8 of the 64 directions (`lib.adapter_spectra`).

# %%
import gc

from lib.adapter_spectra import spectrum, update_table
from lib.evaluation import load_finetuned
from lib.training import run_paths

tuned = load_finetuned(source, run_paths(run_dir)["adapter"], env.compute_dtype).eval()
updates = pd.DataFrame(update_table(tuned))
heat = {"relative_update": "||s·B·A|| / ||W||", "effective_rank": "effective rank (of 64)"}
if "delta_magnitude" in updates:
    heat["delta_magnitude"] = "DoRA magnitude change"
plots.layer_module_heatmaps(updates, heat);

# %%
picked = [(0, "q_proj"), (first_global, "q_proj"), (len(kinds) - 1, "down_proj"), (len(kinds) // 2, "v_proj")]
plots.singular_value_spectra({f"layer {l} {m}": spectrum(tuned, l, m).numpy() for l, m in picked});
by_module = updates.groupby("module")[["relative_update", "effective_rank", "stable_rank", "energy_top_8"]].mean()
by_module.round(3)

# %% [markdown]
# Hidden-state drift per layer, the same test conversations through the base (adapter off) and
# the fine-tuned model (`lib.representations`): 1 - cosine compares each token's vector in the
# shared residual stream; 1 - linear CKA (Kornblith et al. 2019) asks whether the geometry among
# tokens changed, which a common shift of all vectors does not.

# %%
from lib.representations import drift_by_layer

drift = drift_by_layer(tuned, tokenizer, splits["test"][:drift_records])
plots.drift_by_layer(drift, kinds);

# %% [markdown]
# And the attention statistics of section 3 for both, on the same block of held-out code: did
# fine-tuning on short conversations change how far the layers look?

# %%
from lib.evaluation import adapter_switch

block = source_blocks(tokenizer, long_texts, longest, 1)
with adapter_switch(tuned, enabled=False):
    before = pd.DataFrame([s.__dict__ for s in attention_statistics(tuned, block, min_query=window)])
after = pd.DataFrame([s.__dict__ for s in attention_statistics(tuned, block, min_query=window)])
attention_change = pd.DataFrame({"kind": before["kind"], "distance base": before["mean_distance"],
                                 "distance fine-tuned": after["mean_distance"], "entropy base": before["entropy_bits"],
                                 "entropy fine-tuned": after["entropy_bits"]})
attention_change.groupby("kind").mean().round(2)

# %% [markdown]
# ## 6. Gradient flow and memorization, in a short run of our own
#
# A fresh Trinity adapter trained on only a few training records for several epochs, with two
# callbacks that are off in chapter 04: per-layer gradient norms at every step
# (`lib.training.GradientNormCallback`) and the response loss of the training records, of
# validation and of test records every few steps (`lib.memorization.HeldOutLossCallback`).

# %%
from lib.lora import ALL_LINEAR_MODULES
from lib.memorization import HeldOutLossCallback, read_held_out_loss
from lib.run_spec import RunSpec
from lib.training import GradientNormCallback, load_for_training, read_gradient_norms, train

del base
gc.collect()
own_dir = run_dir / "inside-gemma3-run"
torch.manual_seed(seed)
own_records = splits["train"][:own_train_records]
sets = {"train (seen)": own_records[:held_out_records], "validation": splits["val"][:held_out_records],
        "test": splits["test"][:held_out_records]}
own_spec = RunSpec.of(model_name, rank=rank, alpha=alpha, backend="peft", compute_dtype=compute_dtype,
                      max_steps=own_max_steps, batch_size=own_batch_size, max_seq_length=max_seq_length, seed=seed,
                      save_steps=0, sample_every=0, warmup_steps=2)
student, _ = load_for_training(own_spec)
for stale in ("gradient-norms.jsonl", "held-out-loss.jsonl"):
    (own_dir / stale).unlink(missing_ok=True)
own_dir.mkdir(parents=True, exist_ok=True)
own_result = train(student, tokenizer, own_records, own_spec, own_dir, env.device, resume=False,
                   extra_callbacks=[GradientNormCallback(own_dir), HeldOutLossCallback(own_dir, tokenizer, sets,
                                                                                      held_out_every)])
gradients, held_out = read_gradient_norms(own_dir), read_held_out_loss(own_dir)
plots.gradient_norms_by_layer(gradients);

# %%
plots.held_out_curves(held_out);
pd.DataFrame(held_out).set_index("step").round(3)

# %% [markdown]
# **Membership inference** (Yeom et al. 2018): guess that a record was trained on when its loss is
# below a threshold. The AUC over all thresholds is the chance that a random training record has a
# lower loss than a random test record: 0.5 means the model does not tell them apart. For this
# short run (its own training records) and for chapter 04's model (its training split, one pass):

# %%
from lib.memorization import membership_inference

membership = {"short run (several epochs)": membership_inference(student, tokenizer, sets["train (seen)"],
                                                                   sets["test"]),
              "chapter 04 (one pass)": membership_inference(tuned, tokenizer, splits["train"][:held_out_records],
                                                             splits["test"][:held_out_records])}
pd.DataFrame(membership).T.round(3)

# %% [markdown]
# ## 7. Capacity: how many bits a parameter stores
#
# Morris et al. (2025, arXiv 2505.24832) measure memorization where it cannot be confused with
# generalization: on uniformly random token sequences, whose information content is known
# exactly (L log2 V bits each). A model that gives a sequence a negative log-likelihood below that
# has memorized the difference; summed over a dataset, memorization grows with the dataset until
# the model is full. The paper finds about 3.6 bits per parameter (3.51 in bf16, 3.83 in fp32).
#
# Here: small Gemma 3 models (random initialisation, all parameters trained, fp32) on datasets of
# 0.5x-2x the bits the paper's figure predicts they hold (`lib.capacity`).

# %%
from lib.capacity import TinyGemma3, fit_bits_per_parameter, random_sequences, train_to_memorize, trainable_parameters

VOCAB, LENGTH = 256, 32
del student, tuned
gc.collect()
capacity_runs = []
for hidden in capacity_hidden_sizes:
    spec = TinyGemma3(hidden_size=hidden, vocab=VOCAB)
    params = trainable_parameters(spec.build(seed))
    for multiple in capacity_dataset_multiples:
        count = max(8, round(multiple * 3.6 * params / (LENGTH * 8)))
        sequences = random_sequences(count, LENGTH, VOCAB, bos=VOCAB, seed=seed + count)
        capacity_runs.append(train_to_memorize(spec.build(seed), sequences, VOCAB, capacity_steps,
                                               label=f"full model, hidden {hidden}", seed=seed))
fitted = fit_bits_per_parameter(capacity_runs)
unconverged = [f"{r.label} on {r.sequences} sequences" for r in capacity_runs if not r.converged]
print(f"Plateau fit: {fitted:.2f} bits per parameter (the paper: 3.6). "
      + (f"Not converged after {capacity_steps} steps, so lower bounds: {'; '.join(unconverged)}."
         if unconverged else "Every run converged."))
plots.capacity_curves(capacity_runs, fitted);
pd.DataFrame([r.to_dict() for r in capacity_runs]).drop(columns="curve").round(2)

# %% [markdown]
# The same measure for LoRA adapters: the largest small model's random weights frozen, a LoRA
# adapter of rank r on all its projections trained on random sequences; bits per *adapter*
# parameter.

# %%
from peft import LoraConfig, get_peft_model

largest = TinyGemma3(hidden_size=max(capacity_hidden_sizes), vocab=VOCAB)
lora_runs = []
for r in capacity_lora_ranks:
    adapted = get_peft_model(largest.build(seed), LoraConfig(r=r, lora_alpha=r, target_modules="all-linear"))
    params = trainable_parameters(adapted)
    count = max(8, round(2 * 3.6 * params / (LENGTH * 8)))
    sequences = random_sequences(count, LENGTH, VOCAB, bos=VOCAB, seed=seed + r)
    lora_runs.append(train_to_memorize(adapted, sequences, VOCAB, capacity_steps, label=f"LoRA r={r}", seed=seed))
pd.DataFrame([r.to_dict() for r in lora_runs]).drop(columns="curve").round(2)

# %% [markdown]
# On the real 270M a capacity measurement is out of a CPU's reach: even a rank-1 adapter on the
# seven projections has hundreds of thousands of parameters (counted below), room at the paper's
# rate for far more random tokens than a CPU can train to convergence in minutes. What a CPU can
# show is the start of the curve: bits memorized from a small random dataset (tokens drawn from
# 256 ordinary vocabulary entries) as the steps go, per rank. These are lower bounds, not capacities.

# %%
from lib.model import load_causal_lm

alphabet = torch.arange(1000, 1000 + VOCAB)  # 256 ordinary tokens of Gemma 3's vocabulary
real_runs = []
for r in real_lora_ranks:
    real = load_causal_lm(source, env.compute_dtype, load_in_4bit=False)
    real = get_peft_model(real, LoraConfig(r=r, lora_alpha=r, target_modules=ALL_LINEAR_MODULES))
    sequences = random_sequences(real_lora_sequences, LENGTH, alphabet, bos=tokenizer.bos_token_id, seed=seed)
    real_runs.append(train_to_memorize(real, sequences, VOCAB, real_lora_steps, label=f"270M LoRA r={r}",
                                       learning_rate=1e-3, batch_size=real_lora_sequences,
                                       measure_every=max(1, real_lora_steps // 8), seed=seed))
    del real
    gc.collect()
real_table = pd.DataFrame([r.to_dict() for r in real_runs]).drop(columns="curve")
lora_bpp = {rk: run.bits_per_parameter for rk, run in zip(capacity_lora_ranks, lora_runs)}
per_rank = real_runs[0].parameters // real_lora_ranks[0]          # adapter parameters per unit of rank
room_mib = [64 * per_rank * bpp / 8 / 2 ** 20 for bpp in (min(lora_bpp.values()), max(lora_bpp.values()))]
answers_mib = sum(len(r.reference.encode()) for r in splits["train"]) / 2 ** 20
print(f"On the small models a LoRA parameter stored {min(lora_bpp.values()):.2f}-{max(lora_bpp.values()):.2f} bits "
      f"(full models: {fitted:.2f}). The 270M has {per_rank:,} adapter parameters per unit of rank on the 7 "
      f"projections: at r=64, room for {room_mib[0]:.1f}-{room_mib[1]:.1f} MiB of random data at that rate, against "
      f"{answers_mib:.2f} MiB of raw answer text in chapter 04's training split (an upper bound on its information). "
      + ("Capacity is not what limits the rank on this task." if room_mib[0] > answers_mib else
         "On this task a rank-64 adapter could not hold every answer verbatim."))
real_table.round(3)

# %% [markdown]
# ## The claims
#
# The source's architecture claims (C25, C26) and the capacity claim (C27), with verdicts
# computed from the measurements above.

# %%
from lib.claims import ClaimsLedger, ledger_table

ledger = ClaimsLedger("09_inside_gemma3", run_dir)
global_counts = ", ".join(f"{name}: {k.count('full_attention')} of {len(k)}" for name, k in stacks.items())
at_32k = kv[kv["tokens"] == 32_768].set_index("model")
globals_share, pattern_share = at_32k["share_of_memory_all_global"], at_32k["share_of_memory_pattern"]
ledger.measure(
    "C25", f"every 6th layer global in every size ({global_counts} layers global); window 512 (270M, 1B) or 1024 (4B-27B); KV cache share of memory at 32K tokens, all-global -> "
           f"5:1: {', '.join(f'{m} {100 * globals_share[m]:.0f}% -> {100 * pattern_share[m]:.0f}%' for m in at_32k.index)}",
    "2. What the pattern saves",
    {"all_global_share_percent": 100 * globals_share.max(), "pattern_share_percent": 100 * pattern_share.max()},
    note="share = KV cache / (bf16 weights + KV cache), one sequence; exact from the published shapes; the 270M's "
         "cache measured equal to the formula")
ledger.measure(
    "C26", f"RoPE base {rope['full_attention'][0]:,.0f} global / {rope['sliding_attention'][0]:,.0f} local (270M config); "
           f"context {own.max_position_embeddings:,} (270M), 32,768 (1B), 131,072 (4B-27B, global RoPE x8 interpolated)",
    "1. The stack", {"rope_base_global": rope["full_attention"][0], "rope_base_local": rope["sliding_attention"][0]},
    note="128K holds for 4B, 12B and 27B only")
ledger.measure(
    "C27", f"{fitted:.2f} bits per parameter fitted over {len(capacity_hidden_sizes)} small Gemma 3 models "
           f"({min(r.parameters for r in capacity_runs):,}-{max(r.parameters for r in capacity_runs):,} parameters, fp32, "
           f"{capacity_steps} steps); LoRA adapters: "
           f"{', '.join(f'r={rk} {run.bits_per_parameter:.2f}' for rk, run in zip(capacity_lora_ranks, lora_runs))} bits per adapter parameter",
    "7. Capacity", {"bits_per_parameter": fitted},
    caveat=None if all(r.converged for r in capacity_runs) else "not every run converged: their bits are lower bounds")
ledger_table(run_dir, only_measured=True).query("id in ('C25', 'C26', 'C27')")

# %% [markdown]
# ## Summary

# %%
from lib.artifacts import write_json

write_json(run_dir / "metrics" / "inside-gemma3.json", {  # the measurements above, for later runs to compare with
    "compute_dtype": str(env.compute_dtype).removeprefix("torch."), "kv_cache": measured_cache.to_dict("records"),
    "spans": spans.to_dict("records"), "drift": drift, "held_out": held_out, "membership": membership,
    **{name: [r.to_dict() for r in runs] for name, runs in
       {"capacity": capacity_runs, "capacity_lora": lora_runs, "real_lora": real_runs}.items()}})
saved_32k = kv.set_index(["model", "tokens"])["saved"]
base_row = spans.iloc[0]
long_rows = spans[spans["evaluated_on"] != "test split"].set_index("change")
all_windowed = long_rows.loc[f"all global -> window {window}"]
opened = long_rows.loc["all local -> global"]
top_energy = updates["energy_top_8"].mean()
last_held = held_out[-1]
print(f"""Measured on {model_name} ({env.compute_dtype}, {env.device}) in {time.monotonic() - started:.0f} s:
* the stack: {kinds.count('full_attention')} global of {len(kinds)} layers, window {window}; RoPE base {rope['full_attention'][0]:,.0f} global / {rope['sliding_attention'][0]:,.0f} local;
* KV cache at 32K tokens, 5:1 vs all-global: {100 * saved_32k[('27B', 32_768)]:.0f}% smaller for 27B, {100 * saved_32k[('270M', 32_768)]:.0f}% for 270M; share of memory {', '.join(f'{m} {100 * globals_share[m]:.0f}% -> {100 * pattern_share[m]:.0f}%' for m in at_32k.index)};
  the 270M's measured cache equals the formula at {', '.join(str(t) for t in context_lengths)} tokens: {bool((measured_cache['measured_mib'] - measured_cache['formula_mib']).abs().max() < 1e-6)};
* attention past the window ({longest:,} tokens): global layers look {stats[(stats.tokens == longest) & (stats.kind == 'full_attention')].mean_distance.mean():.0f} tokens back on average, local {stats[(stats.tokens == longest) & (stats.kind == 'sliding_attention')].mean_distance.mean():.0f};
* windowing all {len(global_layers)} global layers to {window} tokens on held-out code: loss {all_windowed.loss_delta:+.4f} nats/token for {100 * all_windowed.kv_saved_share:.0f}% less KV cache at {longest:,} tokens; opening every local layer: {opened.loss_delta:+.4f} for {-100 * opened.kv_saved_share:.0f}% more; on the test split (all shorter than the window) windowing changes the loss by {spans.iloc[1].loss_delta:+.4f};
* chapter 04's update: mean effective rank {updates['effective_rank'].mean():.1f} of {updates['rank'].iloc[0]}, {100 * top_energy:.0f}% of its energy in the top 8 directions; largest relative update in {updates.groupby('module').relative_update.mean().idxmax()};
* hidden-state drift grows to 1 - CKA = {1 - drift[-1]['linear_cka']:.3f} at the last layer;
* short run ({own_train_records} records, {own_max_steps} steps): train loss {held_out[0]['train (seen)']:.3f} -> {last_held['train (seen)']:.3f}, test {held_out[0]['test']:.3f} -> {last_held['test']:.3f}; membership AUC {membership['short run (several epochs)']['auc']:.2f} (chapter 04's model: {membership['chapter 04 (one pass)']['auc']:.2f});
* capacity: {fitted:.2f} bits per parameter (paper: 3.6), LoRA {', '.join(f'r={rk}: {run.bits_per_parameter:.2f}' for rk, run in zip(capacity_lora_ranks, lora_runs))} bits per adapter parameter; the 270M LoRA runs memorized at least {', '.join(f'{run.memorized_bits:,.0f} bits (r={rk})' for rk, run in zip(real_lora_ranks, real_runs))} of {real_runs[0].dataset_bits:,.0f}.""")
