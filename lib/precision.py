"""The compute dtype: which floating-point type every computation of the course runs in, and why.

One policy, used by training (both backends), evaluation and generation, the export merge, the
short runs of chapter 01, the Ghost Architect and the vision path:

* **CUDA GPU with bfloat16** (Ampere and newer): bfloat16, the dtype Gemma 3 was trained in.
* **CUDA GPU without bfloat16** (T4, V100): float32. Gemma 3's activations exceed float16's
  largest value (65,504) and become inf/NaN (unsloth.ai/blog/gemma3, "Gemma 3 Training Fixes").
  What each backend then really runs in is `gpu_precision`: peft computes in float32; unsloth,
  asked for float32 or float16, loads Gemma 3 in 16 bits with its float32 fixes and turns the
  trainer's float16 autocast off itself. No backend trains Gemma 3 under float16 autocast.
* **CPU**: whichever of bfloat16 and float32 this CPU multiplies faster, *measured* once per
  machine (`cpu_matmul_speeds`). CPUs with native bfloat16 (AVX512-BF16, AMX-BF16) run it through
  oneDNN several times faster than float32; CPUs without it (most laptops, AVX2 only) fall back
  to torch's reference GEMM, measured here at 1/100 of float32's speed, which turns a 20-minute
  training run into days. The ISA flags are reported next to the measurement to explain it.

`compute_dtype="auto"` applies the policy; "bfloat16" or "float32" forces one (a chapter's
`compute_dtype` parameter). Emulating a CPU without native bfloat16 on one that has it:
`ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2` (both are part of the measurement's cache key).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

COMPUTE_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}
# A token batch through Gemma 3 270M's MLP: 128 tokens x hidden 640 -> intermediate 2048.
BENCHMARK_SHAPE = (128, 640, 2048)
# Environment variables that change which kernels torch and oneDNN pick: part of the cache key.
ISA_OVERRIDES = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "ONEDNN_DEFAULT_FPMATH_MODE")
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_features() -> dict:
    """What the CPU and torch report: model name, bfloat16-related ISA flags, torch's kernel level.

    `torch_capability` is the vectorised kernel level torch dispatches to ("AVX512", "AVX2", ...);
    `native_bf16` is True when /proc/cpuinfo lists AVX512-BF16 or AMX-BF16 and no override caps
    oneDNN below AVX-512 (Linux only; elsewhere the flags are empty and the measurement decides).
    """
    flags, model = set(), platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "flags" and not flags:
                flags = set(value.split())
            elif key.strip() == "model name":
                model = value.strip()
    overrides = {name: os.environ[name] for name in ISA_OVERRIDES if name in os.environ}
    capped = overrides.get("ONEDNN_MAX_CPU_ISA", "").upper().startswith(("AVX2", "SSE", "AVX_"))
    present = [f for f in NATIVE_BF16_FLAGS if f in flags]
    return {"cpu": model, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "torch_capability": torch.backends.cpu.get_cpu_capability(), "bf16_flags": present,
            "avx2": "avx2" in flags, "avx512f": "avx512f" in flags, "overrides": overrides,
            "native_bf16": bool(present) and not capped}


def _linear_step(dtype: torch.dtype, shape: tuple[int, int, int]):
    """A linear layer's three products in `dtype`: forward x W^T, weight gradient g^T x and input
    gradient g W (the plain layout that torch's reference GEMM runs slowest)."""
    tokens, features_in, features_out = shape
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(tokens, features_in, generator=generator).to(dtype)
    weight = torch.randn(features_out, features_in, generator=generator).to(dtype)
    grad = torch.randn(tokens, features_out, generator=generator).to(dtype)

    def step():
        torch.nn.functional.linear(x, weight)
        grad.T @ x
        grad @ weight

    return step


def measure_cpu_matmul(seconds: float = 0.5, shape: tuple[int, int, int] = BENCHMARK_SHAPE,
                       rounds: int = 5) -> dict[str, float]:
    """{dtype name: GFLOP/s} for float32 and bfloat16 on this CPU, at torch's thread count.

    Each dtype runs a linear layer's forward and backward products (`shape` = tokens, in, out);
    the dtypes take turns for `rounds` rounds of `seconds / rounds` each (at least 2 calls), and
    each keeps its best round, so that another process taking the CPU for a moment does not
    decide. On a CPU without native bfloat16 one call can take ~0.5 s: 1-5 s in all.
    """
    tokens, features_in, features_out = shape
    flop = 3 * 2 * tokens * features_in * features_out
    steps = {name: _linear_step(dtype, shape) for name, dtype in COMPUTE_DTYPES.items()}
    best = dict.fromkeys(steps, 0.0)
    for step in steps.values():
        step()  # warm-up: oneDNN picks and caches its kernels
    for _ in range(rounds):
        for name, step in steps.items():
            calls, started = 0, time.perf_counter()
            while calls < 2 or time.perf_counter() - started < seconds / rounds:
                step()
                calls += 1
            best[name] = max(best[name], flop * calls / (time.perf_counter() - started) / 1e9)
    return {name: round(gflops, 2) for name, gflops in best.items()}


@dataclass(frozen=True)
class CpuMatmulSpeeds:
    """A measurement of `measure_cpu_matmul` with what it was measured on (`cpu_features`)."""

    gflops: dict[str, float]
    features: dict
    shape: tuple[int, int, int]
    measured_at: str
    cached: bool = False

    @property
    def bf16_ratio(self) -> float:
        """bfloat16's speed as a multiple of float32's (0.01 = 100x slower)."""
        return self.gflops["bfloat16"] / self.gflops["float32"]

    def to_dict(self) -> dict:
        return asdict(self) | {"bf16_ratio": self.bf16_ratio}


def _cache_file(cache_dir: Path, features: dict) -> Path:
    key = json.dumps({k: features[k] for k in ("cpu", "threads", "torch", "torch_capability", "bf16_flags",
                                                "overrides")}, sort_keys=True)
    return cache_dir / f"cpu-matmul-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def cpu_matmul_speeds(cache_dir: str | Path | None = None, refresh: bool = False) -> CpuMatmulSpeeds:
    """This machine's float32 vs bfloat16 speeds, measured once and cached in the course cache.

    The cache key is the CPU model, its bfloat16 flags, torch's version, kernel level and thread
    count, and the ISA override variables (ISA_OVERRIDES): a different machine, torch or
    emulation measures again. `refresh` measures even when cached. One process measures at a
    time (a file lock: two measuring at once halve each other's speeds). A close result measured
    while other work held the CPU (`contended_and_close`) is used but not cached, so that a
    quieter moment decides for the machine.
    """
    import fcntl

    from .artifacts import read_json, write_json
    from .model import DEFAULT_CACHE

    features = cpu_features()
    path = _cache_file(Path(cache_dir or DEFAULT_CACHE), features)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if path.exists() and not refresh:
            stored = read_json(path)
            return CpuMatmulSpeeds(stored["gflops"], stored["features"], tuple(stored["shape"]),
                                   stored["measured_at"], cached=True)
        from datetime import datetime, timezone

        cpu, wall = time.process_time(), time.perf_counter()
        gflops = measure_cpu_matmul()
        # The share of its threads' time this process got while measuring: near 1 alone, about
        # 0.6 beside one other busy process on 2 cores (measured); the 1-minute load average lags.
        share = (time.process_time() - cpu) / ((time.perf_counter() - wall) * torch.get_num_threads())
        speeds = CpuMatmulSpeeds(gflops, features | {"cpu_share": round(share, 3)}, BENCHMARK_SHAPE,
                                 datetime.now(timezone.utc).isoformat(timespec="seconds"))
        if not contended_and_close(speeds.bf16_ratio, share):
            write_json(path, {k: v for k, v in asdict(speeds).items() if k != "cached"})
    return speeds


def contended_and_close(bf16_ratio: float, cpu_share: float) -> bool:
    """True when a measurement should not be kept for the machine: the measuring process got
    under 80% of its threads' CPU time (other work shared the CPU) and neither dtype was 2x
    faster than the other (a decisive gap, like emulated bfloat16's 100x, survives contention)."""
    return cpu_share < 0.8 and 0.5 < bf16_ratio < 2.0


def choose_cpu_dtype(speeds: CpuMatmulSpeeds) -> tuple[torch.dtype, str]:
    """The faster of bfloat16 and float32 on this CPU, with the reason (speeds and ISA).

    A tie goes to bfloat16, which halves activation memory; anything slower goes to float32.
    """
    features, ratio = speeds.features, speeds.bf16_ratio
    isa = (f"native bfloat16 ({', '.join(features['bf16_flags'])})" if features["native_bf16"]
           else "no native bfloat16" + (f" (capped by {features['overrides']})" if features["bf16_flags"] else ""))
    measured = (f"bfloat16 {speeds.gflops['bfloat16']:.1f} vs float32 {speeds.gflops['float32']:.1f} GFLOP/s "
                f"in a linear layer's matrix products; torch kernels {features['torch_capability']}, {isa}")
    if ratio >= 1:
        return torch.bfloat16, f"CPU: bfloat16 is {ratio:.1f}x as fast as float32 and halves activation memory ({measured})"
    return torch.float32, f"CPU: bfloat16 runs at {ratio:.3g}x float32's speed here, so float32 ({measured})"


def choose_compute_dtype(device: str, requested: str = "auto", gpu_bf16: bool | None = None,
                         cpu_speeds: CpuMatmulSpeeds | None = None) -> tuple[torch.dtype, str]:
    """(dtype, reason) for `device` ("cuda" or "cpu") under the policy in the module docstring.

    requested: "auto" (the policy), "bfloat16" or "float32" (forced; the reason says so).
    gpu_bf16: whether the GPU supports bfloat16 (default: ask torch). cpu_speeds: a measurement
    (default: `cpu_matmul_speeds()`, cached). Raises ValueError for another `requested` or device.
    """
    if requested != "auto":
        if requested not in COMPUTE_DTYPES:
            raise ValueError(f"compute_dtype={requested!r}: use 'auto' or one of {sorted(COMPUTE_DTYPES)}")
        return COMPUTE_DTYPES[requested], f"set by the compute_dtype parameter ({requested})"
    if device == "cuda":
        if torch.cuda.is_bf16_supported() if gpu_bf16 is None else gpu_bf16:
            return torch.bfloat16, "GPU supports bfloat16"
        return torch.float32, ("GPU lacks bfloat16 (e.g. T4): Gemma 3 activations overflow float16's 65,504, "
                               "so compute stays in float32")
    if device != "cpu":
        raise ValueError(f"device={device!r}: use 'cuda' or 'cpu'")
    return choose_cpu_dtype(cpu_speeds or cpu_matmul_speeds())


@dataclass(frozen=True)
class GpuPrecision:
    """What one backend runs Gemma 3 in on a CUDA GPU: the dtype the course asks the loader for,
    the dtype activations are held in (what `lib.memory` estimates with), the trainer's mixed
    precision flags (TrainingArguments bf16 / fp16), and why."""

    load_dtype: torch.dtype
    activations: str
    trainer_bf16: bool
    trainer_fp16: bool
    reason: str


def gpu_precision(backend: str, bf16_supported: bool) -> GpuPrecision:
    """The precision policy on a CUDA GPU, for `backend` ("unsloth" or "peft") on a GPU that does
    or does not support bfloat16 (`torch.cuda.is_bf16_supported()`; False on a T4 or V100).

    Sources: unsloth.ai/blog/gemma3 (float16 overflows Gemma 3; unsloth's fix: float16 matrix
    products, float32 for what overflows); unsloth 2026.10's loader (Gemma 3 is on
    unsloth_zoo.model_lists.FORCE_FLOAT32: without bfloat16 it sets UNSLOTH_FORCE_FLOAT32) and its
    trainer patch ("Switching to float32 training since model cannot work with float16": fp16 and
    bf16 forced off), so unsloth's notebooks' `fp16 = not is_bfloat16_supported()` ends the same.
    Memory of that path: data/measurements/gpu-memory-dtype.json. Raises ValueError for another backend.
    """
    if backend not in ("unsloth", "peft"):
        raise ValueError(f"backend={backend!r}: use 'unsloth' or 'peft'")
    if bf16_supported:
        return GpuPrecision(torch.bfloat16, "bfloat16", True, False,
                            "the GPU supports bfloat16, the dtype Gemma 3 was trained in: bf16 autocast")
    if backend == "unsloth":
        return GpuPrecision(torch.float32, "float16", False, False,
                            "no bfloat16: unsloth loads Gemma 3 in 16 bits with float32 for what overflows "
                            "(UNSLOTH_FORCE_FLOAT32) and switches float16 autocast off itself")
    return GpuPrecision(torch.float32, "float32", False, False,
                        "no bfloat16: float16 overflows Gemma 3's activations (> 65,504) without unsloth's fixes, "
                        "so peft computes in float32 (no autocast)")


def default_device() -> str:
    """'cuda' when a CUDA GPU is visible, else 'cpu'."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_compute_dtype(requested: str | torch.dtype = "auto", device: str | None = None) -> torch.dtype:
    """The dtype for `requested` on `device` (default: this machine's): a torch.dtype passes through."""
    if isinstance(requested, torch.dtype):
        return requested
    return choose_compute_dtype(device or default_device(), requested)[0]
