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
# # 0. Setup: what this machine can run
#
# Before anything trains, this chapter checks the machine: Python and library versions, whether a
# CUDA GPU is present, its memory and bfloat16 support, that bitsandbytes can really quantize to
# NF4 here, and which training backend the rest of the course will use, and why.
#
# The same code is the project's `validate_environment` check, also callable outside the book:
# `python -m lib.environment` prints this table and exits non-zero when a required check fails.

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
seed = 3407
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

# %% [markdown]
# ## The checks
#
# Each row is a check that ran just now. `note` rows are informative: a missing GPU is not a
# failure, it only decides the backend.

# %%
import pandas as pd
from lib.environment import validate_environment

report = validate_environment()
pd.DataFrame(report.table())

# %% [markdown]
# ## Backend and precision
#
# Where unsloth imports, training runs through its `FastModel`: on a CUDA GPU with its fused
# LoRA kernels and gradient checkpointing that offloads activations; without a GPU through its
# CPU fallback, which this course measured running the whole Trinity faster than plain peft on
# the same CPU (`data/measurements/unsloth-cpu-fallback.json`). Where unsloth is missing or fails
# to import, training runs through plain transformers + peft + bitsandbytes, which support the
# whole Trinity (NF4 base, LoRA r=64, rsLoRA, DoRA) on a CPU too. A `backend` parameter other than
# `auto` overrides the choice.
#
# **Precision on a T4.** Gemma 3 was trained in bfloat16, and some of its activations exceed
# float16's largest value (65,504): in float16 they become `inf`, and the loss becomes NaN. A T4
# (like a V100 or an RTX 20xx) has no bfloat16. Unsloth's fix keeps the overflowing computations
# in float32 while matrix products stay in float16; the peft backend here takes the simple route
# and computes in float32 on such GPUs, which costs memory but never overflows.

# %%
chosen, why = (report.backend, report.backend_reason) if backend == "auto" else (backend, "set by parameter")
pd.DataFrame([
    {"setting": "device", "value": report.device, "why": ""},
    {"setting": "backend", "value": chosen, "why": why},
    {"setting": "compute dtype", "value": str(report.compute_dtype), "why": report.dtype_reason},
])

# %% [markdown]
# ## Verdict

# %%
print("environment OK" if report.ok else "environment FAILED: fix the FAIL rows above before going on")
assert report.ok, [row for row in report.table() if row["status"] == "FAIL"]
