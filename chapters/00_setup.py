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
backend = "auto"                     # "auto", "unsloth" or "peft"
compute_dtype = "auto"               # "auto" (measured on a CPU), "bfloat16" or "float32"
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
# ## The checks
#
# Each row is a check that ran just now. `note` rows are informative: a missing GPU is not a
# failure, it only decides the backend.

# %%
import pandas as pd
from lib.environment import validate_environment

report = validate_environment(compute_dtype)
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
# in float32 while matrix products stay in float16, and it turns the trainer's float16 autocast
# off for Gemma 3 itself; the peft backend here takes the simple route and computes in float32
# on such GPUs, which never overflows (chapter 02 measures what it costs in memory).
#
# **Precision on a CPU.** Whether bfloat16 is fast on a CPU depends on the CPU. Those with native
# bfloat16 instructions (AVX512-BF16, AMX-BF16: recent Xeons and EPYCs) multiply bfloat16 through
# oneDNN faster than float32; most laptops and many cloud machines (AVX2 only) have none, and
# torch then falls back to a reference loop that this course measured at about 1/100 of
# float32's speed, which turns a 20-minute training run into days. So the course does not guess:
# `lib.precision` times a linear layer's matrix products (forward and weight gradient, Gemma 3
# 270M's MLP shape) in both dtypes, once per machine, and every computation of the course
# (training with either backend, evaluation, generation, the export merge, the Ghost Architect)
# runs in the faster one. The `compute_dtype` parameter forces one.
#
# The policy on GPUs, as `lib.precision.gpu_precision` decides it:

# %%
from lib.precision import gpu_precision

pd.DataFrame([{"GPU": gpu, "backend": name, "asks the loader for": str(plan.load_dtype).removeprefix("torch."),
               "activations": plan.activations, "trainer autocast": "bf16" if plan.trainer_bf16 else "none",
               "why": plan.reason}
              for gpu, bf16 in (("bfloat16 (A100, L4, H100)", True), ("no bfloat16 (T4, V100)", False))
              for name in ("unsloth", "peft") for plan in [gpu_precision(name, bf16)]])

# %% [markdown]
# And on this machine:

# %%
chosen, why = (report.backend, report.backend_reason) if backend == "auto" else (backend, "set by parameter")
pd.DataFrame([
    {"setting": "device", "value": report.device, "why": ""},
    {"setting": "backend", "value": chosen, "why": why},
    {"setting": "compute dtype", "value": str(report.compute_dtype), "why": report.dtype_reason},
])

# %% [markdown]
# On a CPU, the measurement behind the choice (cached per machine in the course cache; the ISA
# columns are what the CPU and torch report):

# %%
if report.cpu_speeds is not None:
    speeds = report.cpu_speeds
    features = speeds.features
    display(pd.DataFrame([{"dtype": name, "GFLOP/s": gflops, "x float32": gflops / speeds.gflops["float32"]}
                          for name, gflops in speeds.gflops.items()]).round(3))
    display(pd.DataFrame([{"CPU": features["cpu"], "threads": features["threads"],
                           "torch kernels": features["torch_capability"],
                           "bfloat16 flags": ", ".join(features["bf16_flags"]) or "none",
                           "ISA overrides": ", ".join(f"{k}={v}" for k, v in features["overrides"].items()) or "none",
                           "measured": speeds.measured_at + (" (cached)" if speeds.cached else "")}]))

# %% [markdown]
# ## Verdict

# %%
print("environment OK" if report.ok else "environment FAILED: fix the FAIL rows above before going on")
assert report.ok, [row for row in report.table() if row["status"] == "FAIL"]
