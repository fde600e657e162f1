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
# # 7. Export: adapter, merged model, GGUF and Ollama, each one run
#
# A fine-tuned model is only useful where it can run. This chapter exports the run of chapter 04
# four ways and runs every artifact on the test split before calling it done:
#
# | artifact | what it is | runs with |
# |---|---|---|
# | LoRA adapter | B, A and DoRA magnitudes only (peft format) | peft, on top of the base |
# | merged 16-bit | the base with the adapter folded in (safetensors) | plain transformers |
# | GGUF f16, q8_0, q4_k_m | llama.cpp's format, quantized to 8 and ~4.5 bits | llama.cpp, Ollama, LM Studio |
# | Modelfile | Ollama's recipe: GGUF, chat template, stop token, sampling | `ollama create` |
#
# The usual one-liner (unsloth's `save_pretrained_gguf`) clones and compiles llama.cpp from
# GitHub, which fails without internet. Here the llama.cpp that ships inside the
# llama-cpp-python source package does the work: its converter turns the merged model into
# GGUF, and its quantizer (compiled once at install time) makes q8_0 and q4_k_m. Nothing in this
# chapter uses the network.

# %% tags=["parameters"]
model_name = "gemma-3-270m"          # embedded alias, local folder or hub id
run_name = "default"                 # artifacts: <output_dir>/<run_name>/
output_dir = "output"
adapter_dir = None                   # None: the adapter chapter 04 trained, <run>/adapter
quantizations = ["q8_0", "q4_k_m"]
eval_limit = None                    # test records for the loss (None: all)
generate_n = 24                      # test records to generate for (greedy)
max_new_tokens = 160
eval_batch_size = 4
n_ctx = 1024                         # llama.cpp context for evaluation
compare_original_merge = True        # also merge into the unquantized weights and measure it
max_relative_change = 0.05           # gate: quantized within 5% of the merged model
compute_dtype = "auto"               # "auto" (lib.precision: measured on a CPU), "bfloat16" or "float32"
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
    # llama.cpp for GGUF: the Python binding, and the converter its sdist vendors (unpacked into the cache).
    sdist = Path.cwd() / "sdist"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "llama-cpp-python==0.3.36"], check=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                    "llama-cpp-python==0.3.36", "-d", str(sdist)], check=True)
    subprocess.run([sys.executable, "-m", "lib.export", "unpack", str(sdist / "llama_cpp_python-0.3.36.tar.gz")],
                   cwd=course, check=True)
    os.chdir(course)
os.chdir(next(p for p in [Path.cwd(), *Path.cwd().parents] if (p / "lib").is_dir()))
sys.path.insert(0, os.getcwd())

from lib.environment import quiet_library_logs

quiet_library_logs()

# %%
import pandas as pd
import torch
from lib.data import load_prepared
from lib.environment import validate_environment
from lib.model import load_tokenizer, resolve_model
from lib.training import run_paths

env = validate_environment(compute_dtype)
run_dir = Path(output_dir) / run_name
export_dir = run_dir / "export"
trained_adapter = Path(adapter_dir) if adapter_dir else run_paths(run_dir)["adapter"]
test = load_prepared(run_dir / "data")["test"][:eval_limit]
source = resolve_model(model_name)
tokenizer = load_tokenizer(source)
print(f"exporting {trained_adapter} (base: {source.name}) into {export_dir}; {len(test)} test records")

# %% [markdown]
# ## 1. The LoRA adapter
#
# The adapter is what training produced: a few MiB next to a base model of hundreds. Copied into
# the export folder, then loaded back the way a user would (`AutoPeftModelForCausalLM`, which
# reads the base model's name from `adapter_config.json`), and compared with the trained adapter
# loaded on its NF4 base in memory, both running peft's own DoRA forward (what a user without this
# course runs; chapter 06 evaluates with the course's faster one): the same greedy answers, token
# for token.

# %%
from peft import AutoPeftModelForCausalLM
from lib.evaluation import generate, load_finetuned
from lib.export import export_adapter
from lib.model import keep_4bit_layout_on_cpu, nf4_config

adapter_out = export_adapter(trained_adapter, export_dir / "adapter")
in_memory = load_finetuned(source, trained_adapter, env.compute_dtype, fast_dora=False)  # peft's forward, as reloaded
reloaded = AutoPeftModelForCausalLM.from_pretrained(str(adapter_out), dtype=env.compute_dtype,
                                                    quantization_config=nf4_config(env.compute_dtype))
if env.device == "cpu":
    keep_4bit_layout_on_cpu(reloaded)
prompts = [r.prompt_messages for r in test[:2]]
answers = {"in memory": generate(in_memory, tokenizer, prompts, 48), "reloaded": generate(reloaded, tokenizer, prompts, 48)}
print({f.name: f"{f.stat().st_size / 2**20:.1f} MiB" for f in adapter_out.iterdir() if f.suffix in (".json", ".safetensors")})
print("same greedy answers:", answers["in memory"] == answers["reloaded"])
assert answers["in memory"] == answers["reloaded"]
del in_memory, reloaded

# %% [markdown]
# ## 2. The merged 16-bit model
#
# `merge_and_unload` folds s·B·A (and DoRA's magnitude rescaling) into W, giving a plain model
# that loads with transformers alone. Which W? Training saw the NF4-rounded weights, and the
# adapter learned its update on top of them. `lib.export.merge_adapter` therefore dequantizes the
# NF4 base and merges there (in float32 on a CPU, saved in bf16), as unsloth's merged export
# does: the merged model is the model that was trained. The alternative, merging into the
# original unquantized checkpoint, is measured next to it when `compare_original_merge` is set.
# Chapter 06's numbers for the adapter on its NF4 base are the yardstick.

# %%
from lib.artifacts import read_json
from lib.export import evaluate_merged, merge_adapter

results, examples = {}, {}
evaluation_06 = run_dir / "metrics" / "evaluation.json"
if evaluation_06.exists():
    results["adapter on NF4 (chapter 06)"] = read_json(evaluation_06)["results"]["fine-tuned"]


def measure_merged(label: str, folder: Path) -> None:
    results[label], examples[label] = evaluate_merged(folder, tokenizer, test, generate_n, max_new_tokens,
                                                      eval_batch_size, env.compute_dtype)


merged_dir = merge_adapter(source, adapter_out, export_dir / "merged")
measure_merged("merged bf16", merged_dir)
if compare_original_merge:
    original_dir = merge_adapter(source, adapter_out, export_dir / "merged-into-original", base="original")
    measure_merged("merged into original weights", original_dir)
merge_columns = ["loss", "perplexity", "parse_rate", "defines_function_rate", "clean_rate", "repeated_line_rate",
                 "chrf", "generated"]
pd.DataFrame(results).T.reindex(columns=merge_columns).astype(float).round(3)

# %%
if compare_original_merge:
    nf4, original = results["merged bf16"], results["merged into original weights"]
    print(f"merging into the original weights instead of the NF4 ones: perplexity {nf4['perplexity']:.3f} -> "
          f"{original['perplexity']:.3f}, defines the function {nf4['defines_function_rate']:.1f}% -> "
          f"{original['defines_function_rate']:.1f}% (n={nf4['generated']})")

# %% [markdown]
# The GGUF files below are made from `merged bf16`, the NF4 merge.

# %% [markdown]
# ## 3. GGUF: f16, q8_0 and q4_k_m
#
# llama.cpp's `convert_hf_to_gguf.py` writes the merged model as an f16 GGUF; llama.cpp's
# quantizer then makes **q8_0** (8-bit blocks of 32 with one scale) and **q4_k_m** (4-bit
# "k-quants" in super-blocks of 256, with some tensors kept at 6 bits). Each file is checked by
# reading its header and tensor index with llama.cpp's own GGUF reader before anything loads it
# (`lib.export.check_gguf`).

# %%
import time
from lib.export import check_gguf, convert_to_gguf, quantize_gguf

gguf_dir = export_dir / "gguf"
gguf_dir.mkdir(parents=True, exist_ok=True)
started = time.perf_counter()
ggufs = {"f16": convert_to_gguf(merged_dir, gguf_dir / "model-f16.gguf")}
build_seconds = {"f16": time.perf_counter() - started}
fallbacks = {"f16": 0}
for kind in quantizations:
    started = time.perf_counter()
    log_path = export_dir / "logs" / f"quantize-{kind}.log"
    ggufs[kind] = quantize_gguf(ggufs["f16"], gguf_dir / f"model-{kind}.gguf", kind, log_path=log_path)
    build_seconds[kind] = time.perf_counter() - started
    fallbacks[kind] = log_path.read_text().count("falling back")
pd.DataFrame({kind: check_gguf(path) | {"seconds to write": build_seconds[kind], "tensors on a fallback type":
                                        fallbacks[kind]} for kind, path in ggufs.items()}).T

# %% [markdown]
# k-quants (q4_K, q6_K) work on rows of 256 values. Gemma 3 270M's hidden size is 640, so every
# projection whose input is 640 wide cannot use them, and llama.cpp falls back to q5_0 or q8_0
# for those tensors (counted above; the full list is in `export/logs/`). Larger Gemma 3 sizes
# (1152, 2560, 3840, 5376) have the same issue only where 256 does not divide the width.

# %% [markdown]
# ## 4. Every GGUF, run
#
# Each file is loaded in llama-cpp-python and measured on the same test records: response loss
# and perplexity from llama.cpp's own logits (same tokens, same assistant-only positions as
# chapter 06), and greedy answers scored with the same code metrics, with load time, generation
# speed and seconds per response.

# %%
from lib.export import evaluate_gguf

for kind, path in ggufs.items():
    results[f"GGUF {kind}"], examples[f"GGUF {kind}"] = evaluate_gguf(path, tokenizer, test, generate_n,
                                                                      max_new_tokens, n_ctx)
columns = ["file_mib", "load_seconds", "loss", "perplexity", "parse_rate", "defines_function_rate", "clean_rate",
           "repeated_line_rate", "chrf", "tokens_per_second", "seconds_per_response"]
table = pd.DataFrame({k: v for k, v in results.items() if k == "merged bf16" or k.startswith("GGUF")}).T
table = table.reindex(columns=columns).astype(float)
table.round(3)

# %%
from lib.plots import export_comparison

export_comparison(table);

# %% [markdown]
# The merged model's speed columns are empty on purpose: its generation runs batched in
# transformers, which is not comparable with llama.cpp's one-sequence generation.
#
# ## 5. The quantization-verified gate
#
# q8_0 and q4_k_m pass when their perplexity is within `max_relative_change` of the merged
# model's, and their rate of clean answers (chapter 06: defines the function, its names resolve,
# no repeated line, stops by itself) is too, or else not significantly different from the merged
# model's on the same prompts (exact McNemar test on the paired outcomes, p >= 0.05).
# Why the second clause: with two dozen generations one answer moves the rate by 4 points, and greedy
# decoding turns tiny numeric differences into different answers. The f16 GGUF is gated too, as
# a control: it holds the merged model's weights in 16 bits, so whatever separates its row from
# the merged model's comes from the engine's arithmetic, not from quantization. The verdicts go
# to `metrics/export-gates.json`.

# %%
from lib.artifacts import write_json
from lib.evaluation import quantization_gate, write_gates

gates = [quantization_gate(results["merged bf16"], results[f"GGUF {kind}"], kind, examples["merged bf16"],
                           examples[f"GGUF {kind}"], max_relative_change) for kind in ["f16", *quantizations]]
write_gates(run_dir / "metrics" / "export-gates.json", gates)
write_json(run_dir / "metrics" / "export.json", {"base_model": source.path_or_id, "results": results,
                                                  "examples": examples})
pd.DataFrame([{"gate": g.name, "verdict": g.verdict, "detail": g.detail} for g in gates])

# %% [markdown]
# ## 6. Ollama
#
# Ollama runs GGUF files through llama.cpp. Its Modelfile names the file, the chat template (in
# Go's template language), the stop token and sampling parameters. The template must render a
# conversation exactly as the tokenizer's chat template does, or the model sees prompts it was
# not trained on; the course's tests render both with Go's `text/template` (Ollama's engine) and
# require identical text.

# %%
import shutil
from lib.export import write_modelfile

modelfile = write_modelfile(ggufs["q4_k_m"] if "q4_k_m" in ggufs else ggufs["f16"])
print(modelfile.read_text())
print(f"ollama: {shutil.which('ollama') or 'not installed on this machine'}")

# %% [markdown]
# With Ollama installed, from the GGUF folder:
#
# ```bash
# cd output/default/export/gguf
# ollama create gemma3-trinity -f Modelfile
# ollama run gemma3-trinity "Write a Python function slugify(text) that ..."
# ```
#
# Ollama is not installed on the machine that executed this notebook (it is neither a Debian
# nor a PyPI package), so the cell above only writes the Modelfile; the speed it would reach is
# llama.cpp's, measured in section 4.
#
# ## 7. A damaged file
#
# A download cut short or a disk full leaves a truncated GGUF. It is refused with a message
# that says what is wrong, before llama.cpp touches it:

# %%
from lib.export import GGUFError, load_gguf

damaged = gguf_dir / "damaged-example.gguf"
damaged.write_bytes(ggufs["f16"].read_bytes()[: ggufs["f16"].stat().st_size // 2])
try:
    load_gguf(damaged)
except GGUFError as err:
    print(f"GGUFError: {err}")
finally:
    damaged.unlink()

# %% [markdown]
# ## Claims ledger

# %%
from lib.claims import ClaimsLedger, ledger_table

ledger = ClaimsLedger("07_export", run_dir)
for kind, gate in zip(quantizations, gates[1:]):  # the quantized ones
    change = 100 * (results[f"GGUF {kind}"]["perplexity"] / results["merged bf16"]["perplexity"] - 1)
    ledger.measure("C24", f"{gate.detail} (gate {gate.verdict})", f"quantization gate, {gate.name}",
                   {"perplexity_change_percent": change}, note="the verdict reads perplexity; the gate also requires "
                   "the clean-answer rate")
if "q4_k_m" in quantizations:
    seconds = results["GGUF q4_k_m"]["seconds_per_response"]
    ledger.measure("C19", f"{seconds:.2f} s per response (q4_k_m in llama.cpp, Ollama's engine; up to "
                   f"{max_new_tokens} new tokens; {model_name})", "Every GGUF, run", {"seconds_per_response": seconds},
                   note="llama-cpp-python, not Ollama itself; a 270M model")
ledger_table(run_dir, only_measured=True).query("id in @ledger.claim_ids")  # the whole ledger: chapter 11

# %% [markdown]
# ## Summary
#
# `output/<run>/export/` now holds `adapter/`, `merged/` (transformers), `gguf/model-{f16,q8_0,q4_k_m}.gguf`
# and `gguf/Modelfile`; each was loaded and measured above, and the gate verdicts are in
# `metrics/export-gates.json`.
