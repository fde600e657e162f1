"""The compute-dtype policy (lib.precision): the decision rules, the cache, and on this machine a
guard that the dtype it picks is not the slow one."""

import os
import subprocess
import sys

import pytest
import torch

from helpers import ROOT
from lib.precision import (CpuMatmulSpeeds, _cache_file, choose_compute_dtype, choose_cpu_dtype, cpu_features,
                           cpu_matmul_speeds, measure_cpu_matmul)

AVX2_ONLY = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}


def speeds(float32: float, bfloat16: float, native: bool) -> CpuMatmulSpeeds:
    features = {"cpu": "test", "threads": 2, "torch": "x", "torch_capability": "AVX2", "overrides": {},
                "bf16_flags": ["amx_bf16"] if native else [], "native_bf16": native}
    return CpuMatmulSpeeds({"float32": float32, "bfloat16": bfloat16}, features, (1, 1, 1), "now")


def test_cpu_rule_takes_the_faster_dtype_and_says_why():
    dtype, why = choose_cpu_dtype(speeds(40.0, 0.4, native=False))
    assert dtype == torch.float32 and "0.01x" in why and "no native bfloat16" in why
    dtype, why = choose_cpu_dtype(speeds(60.0, 230.0, native=True))
    assert dtype == torch.bfloat16 and "3.8x" in why and "amx_bf16" in why
    assert choose_cpu_dtype(speeds(50.0, 50.0, native=True))[0] == torch.bfloat16  # a tie: half the memory


def test_gpu_rules_and_forced_dtypes():
    assert choose_compute_dtype("cuda", gpu_bf16=True)[0] == torch.bfloat16
    assert choose_compute_dtype("cuda", gpu_bf16=False)[0] == torch.float32  # T4: Gemma 3 overflows float16
    assert choose_compute_dtype("cpu", "float32")[0] == torch.float32
    assert choose_compute_dtype("cuda", "bfloat16", gpu_bf16=False)[0] == torch.bfloat16
    with pytest.raises(ValueError, match="compute_dtype='float16'"):
        choose_compute_dtype("cpu", "float16")
    with pytest.raises(ValueError, match="device='mps'"):
        choose_compute_dtype("mps")


def test_measured_once_per_machine_and_emulation(tmp_path):
    first = cpu_matmul_speeds(tmp_path)
    again = cpu_matmul_speeds(tmp_path)
    assert not first.cached and again.cached and again.gflops == first.gflops
    emulated = cpu_features() | {"overrides": AVX2_ONLY}
    assert _cache_file(tmp_path, emulated) != _cache_file(tmp_path, cpu_features())


def test_the_chosen_dtype_is_not_the_slow_one_on_this_cpu():
    """Guard: on the machine the tests run on, what lib picks is at most 2x slower than the other."""
    measured = CpuMatmulSpeeds(measure_cpu_matmul(seconds=0.5, shape=(64, 640, 1024)), cpu_features(),
                               (64, 640, 1024), "now")
    chosen, _ = choose_cpu_dtype(measured)
    name = "bfloat16" if chosen == torch.bfloat16 else "float32"
    other = "float32" if name == "bfloat16" else "bfloat16"
    print(f"{measured.gflops} -> {name}")
    assert measured.gflops[name] >= 0.5 * measured.gflops[other], measured.gflops


def test_a_cpu_without_native_bfloat16_gets_float32():
    """With oneDNN and torch capped at AVX2 (emulating a CPU without AVX512-BF16 or AMX, as most
    laptops are), bfloat16 falls to torch's reference GEMM and the policy must pick float32."""
    code = ("from lib.precision import *; s = CpuMatmulSpeeds(measure_cpu_matmul(0.5, (64, 640, 1024)), "
            "cpu_features(), (64, 640, 1024), 'now'); print(choose_cpu_dtype(s)[0], s.bf16_ratio)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=os.environ | AVX2_ONLY,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    dtype, ratio = result.stdout.split()
    assert dtype == "torch.float32" and float(ratio) < 0.2, result.stdout
