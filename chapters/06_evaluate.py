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
# # 6. Evaluate: base model vs fine-tuned, on modules never trained on
#
# A loss curve going down says the model fits its training data. Whether it learned the task is
# a question for held-out data: the test split, whose functions come from standard-library
# modules absent from training. The same quantized base model is measured twice, with the
# adapter switched off (the baseline) and on:
#
# * **response loss** and **perplexity** on the reference answers (teacher forcing, assistant
#   tokens only: the quantity training minimises);
# * on greedy generations: the share that **parses** as Python, the share that **defines the
#   asked function**, and **chrF** against the reference source (character n-gram F-score).

# %% tags=["parameters"]
model_name = "gemma-3-270m"          # embedded alias, local folder or hub id
dataset_dir = "data/python-stdlib"   # train/val/test .jsonl or .json
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
eval_limit = None                    # test records for the loss (None: all)
generate_n = 24                      # test records to generate for (greedy)
max_new_tokens = 160
eval_batch_size = 4
min_loss_drop = 0.15                 # gate: response loss >= 15% below baseline
min_task_gain = 25.0                 # gate: and defines-function rate >= 25 points up
course_repo = "https://github.com/gemma-trinity/gemma3-trinity-course.git"  # Colab

# %% tags=["hide-input"]
# Setup: on Colab, clone the course and install its stack; locally, run from the repository root.
import os, subprocess, sys
from pathlib import Path

if "google.colab" in sys.modules and not Path("lib").is_dir():
    subprocess.run(["git", "clone", "--depth", "1", course_repo, "/content/course"], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-r", "/content/course/requirements.txt",
                    "unsloth==2026.10.7", "unsloth_zoo==2026.10.7"], check=True)  # .8/.9 pin a missing certifi
    os.chdir("/content/course")
os.chdir(next(p for p in [Path.cwd(), *Path.cwd().parents] if (p / "lib").is_dir()))
sys.path.insert(0, os.getcwd())

from lib.environment import quiet_library_logs

quiet_library_logs()

# %%
import pandas as pd
from lib.data import load_prepared
from lib.environment import validate_environment
from lib.evaluation import load_finetuned
from lib.model import resolve_model, load_tokenizer
from lib.training import run_paths

env = validate_environment(compute_dtype)
run_dir = Path(output_dir) / run_name
test = load_prepared(run_dir / "data")["test"][:eval_limit]
source = resolve_model(model_name)
tokenizer = load_tokenizer(source)
model = load_finetuned(source, run_paths(run_dir)["adapter"], env.compute_dtype)
print(f"{len(test)} test records from {len({r.meta.get('module') for r in test})} modules; "
      f"generating for {min(generate_n, len(test))}")

# %% [markdown]
# ## Measure both

# %%
import time
from lib.evaluation import evaluate_model

results, rows, seconds = {}, {}, {}
for name, adapter in [("base", False), ("fine-tuned", True)]:
    started = time.monotonic()
    results[name], rows[name] = evaluate_model(model, tokenizer, test, generate_n, max_new_tokens,
                                               eval_batch_size, adapter=adapter)
    seconds[name] = round(time.monotonic() - started, 1)
table = pd.DataFrame(results).T.assign(seconds=pd.Series(seconds))
table

# %%
from lib import plots

plots.base_vs_finetuned(results["base"], results["fine-tuned"]);

# %% [markdown]
# ## Side by side
#
# The first two test prompts, with what each model wrote:

# %%
for i in range(min(2, len(rows["base"]))):
    print(f"===== {rows['base'][i]['function']} =====")
    for name in rows:
        print(f"--- {name} (parses: {rows[name][i]['parses']}) ---\n{rows[name][i]['generation']}\n")
    print(f"--- reference ---\n{rows['base'][i]['reference']}\n")

# %% [markdown]
# ## Gates
#
# Two gates decide whether this run is worth keeping, and are stored in
# `output/<run>/metrics/gates.json`:
#
# * **baseline-established**: the base model's metrics are measured and stored in
#   `metrics/baseline.json`;
# * **model-performance**: the fine-tuned model's response loss is at least `min_loss_drop`
#   (relative) below the baseline's, *and* the share of generations that define the asked
#   function is at least `min_task_gain` percentage points higher.
#
# chrF is reported but not gated. It compares characters, and a base model that answers by
# repeating the prompt (signature, module name, docstring) shares many character n-grams with
# the reference without writing any code: compare the base model's chrF with its parse rate in
# the table above.

# %%
from lib.artifacts import write_json
from lib.evaluation import baseline_gate, performance_gate, write_gates

metrics_dir = run_dir / "metrics"
gates = [baseline_gate(results["base"], metrics_dir / "baseline.json"),
         performance_gate(results["base"], results["fine-tuned"], min_loss_drop, min_task_gain)]
write_json(metrics_dir / "evaluation.json", {"results": results, "examples": rows})
write_gates(metrics_dir / "gates.json", gates)
pd.DataFrame([{"gate": g.name, "verdict": g.verdict, "detail": g.detail} for g in gates])

# %% [markdown]
# ## Summary
#
# The table and plot above are this run's measured answer: how far the fine-tuned model moved
# from the base model on modules it never saw. The base Gemma 3 270M is a pretrained model, not
# an instruction-tuned one, and was never taught the chat format; the side-by-side samples show
# what it does with a request instead of answering it.
