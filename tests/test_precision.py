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


def test_measured_once_per_machine_and_emulation(tmp_path, monkeypatch):
    import lib.precision

    monkeypatch.setattr(lib.precision, "contended_and_close", lambda ratio, share: False)  # a quiet machine
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


def test_a_t4_gets_float32_under_peft_and_unsloths_16_bit_path_never_float16_autocast():
    from lib.precision import gpu_precision

    t4_peft, t4_unsloth = gpu_precision("peft", bf16_supported=False), gpu_precision("unsloth", bf16_supported=False)
    assert (t4_peft.load_dtype, t4_peft.activations) == (torch.float32, "float32")
    assert (t4_unsloth.load_dtype, t4_unsloth.activations) == (torch.float32, "float16")
    assert not any(p.trainer_fp16 or p.trainer_bf16 for p in (t4_peft, t4_unsloth))
    for backend in ("peft", "unsloth"):
        h100 = gpu_precision(backend, bf16_supported=True)
        assert (h100.load_dtype, h100.activations, h100.trainer_bf16, h100.trainer_fp16) == (
            torch.bfloat16, "bfloat16", True, False)
    with pytest.raises(ValueError, match="backend='vllm'"):
        gpu_precision("vllm", bf16_supported=False)
    # and the training arguments follow it: bf16 autocast only where the GPU has bfloat16
    from lib.run_spec import TrainingConfig
    from lib.training import training_arguments

    t4_args = training_arguments(TrainingConfig(), ROOT / "output" / "t4-test", "cpu", torch.float32)
    assert not t4_args.fp16


def test_installed_unsloth_still_takes_gemma3_off_float16():
    """The T4 policy leans on two things in unsloth's source: Gemma 3 is on FORCE_FLOAT32, and its
    trainer patch switches float16 autocast off for such models. Read, not imported (no GPU here)."""
    import importlib.util
    from pathlib import Path

    zoo = Path(importlib.util.find_spec("unsloth_zoo").origin).parent / "model_lists.py"
    forced = zoo.read_text().split("FORCE_FLOAT32 = [", 1)[1].split("]", 1)[0]
    assert '"gemma3,"' in forced, f"{zoo}: Gemma 3 is no longer forced off float16"
    trainer_patch = Path(importlib.util.find_spec("unsloth").origin).parent / "models" / "rl.py"
    assert "Switching to float32 training since model cannot work with float16" in trainer_patch.read_text()


def test_a_close_measurement_under_contention_is_not_kept(tmp_path, monkeypatch):
    import lib.precision
    from lib.precision import contended_and_close

    assert contended_and_close(0.9, cpu_share=0.6) and not contended_and_close(0.9, cpu_share=0.95)
    assert not contended_and_close(0.01, cpu_share=0.5)  # emulated bfloat16: 100x survives contention
    monkeypatch.setattr(lib.precision, "measure_cpu_matmul", lambda: {"float32": 40.0, "bfloat16": 38.0})
    monkeypatch.setattr(lib.precision, "contended_and_close", lambda ratio, share: True)
    assert not cpu_matmul_speeds(tmp_path).cached and not cpu_matmul_speeds(tmp_path).cached
    monkeypatch.setattr(lib.precision, "contended_and_close", lambda ratio, share: False)
    assert not cpu_matmul_speeds(tmp_path).cached and cpu_matmul_speeds(tmp_path).cached
