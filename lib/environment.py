"""Environment validation: what this machine can run, which training backend it gets, and why.

`validate_environment()` is the project's check, used by chapter 00 and from the command line:

    python -m lib.environment            # prints the table, exits 1 if a required check fails

The compute dtype follows the course's one precision policy (`lib.precision`): bfloat16 on GPUs
that have it, float32 on those that do not (T4), and on a CPU whichever of the two this CPU
multiplies faster, measured.
"""

from __future__ import annotations

import importlib
import importlib.metadata as metadata
import importlib.util
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass, field

import torch

from .precision import CpuMatmulSpeeds, choose_compute_dtype, cpu_matmul_speeds

REQUIRED_PACKAGES = ("transformers", "peft", "trl", "bitsandbytes", "accelerate", "datasets")


@dataclass(frozen=True)
class Check:
    name: str
    value: str
    ok: bool
    required: bool = True
    note: str = ""


@dataclass
class EnvironmentReport:
    """All checks, the chosen backend and compute dtype, each with the reason."""

    checks: list[Check] = field(default_factory=list)
    backend: str = "peft"
    backend_reason: str = ""
    compute_dtype: torch.dtype = torch.float32
    dtype_reason: str = ""
    device: str = "cpu"
    cpu_speeds: CpuMatmulSpeeds | None = None  # the CPU's measured float32 vs bfloat16 speeds (no GPU)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks if c.required)

    def table(self) -> list[dict]:
        return [{"check": c.name, "value": c.value, "status": "PASS" if c.ok else ("FAIL" if c.required else "note"),
                 "note": c.note} for c in self.checks]


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


TRAINING_STACK = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "trl", "unsloth", "unsloth_zoo")


def package_versions(packages=TRAINING_STACK) -> dict[str, str]:
    """{package: installed version} for those of `packages` that are installed: a measurement's provenance."""
    return {package: version for package in packages if (version := _version(package))}


def nf4_roundtrip_error() -> float:
    """Quantize a random 64x64 matrix to NF4 with bitsandbytes and back: relative Frobenius error.

    A working 4-bit path gives about 0.1; raises whatever bitsandbytes raises if it cannot run.
    """
    import bitsandbytes.functional as bnbf

    device = "cuda" if torch.cuda.is_available() else "cpu"
    weight = torch.randn(64, 64, generator=torch.Generator().manual_seed(0)).to(device)
    packed, state = bnbf.quantize_4bit(weight, quant_type="nf4", compress_statistics=True)
    restored = bnbf.dequantize_4bit(packed, state, quant_type="nf4")
    return float((restored - weight).norm() / weight.norm())


def unsloth_status() -> tuple[bool, str]:
    """(importable, why) for unsloth, checked in a child process.

    Importing unsloth patches transformers for the rest of the process, so the check itself must
    not import it here; `import_backend` does that once the backend is chosen.
    """
    if importlib.util.find_spec("unsloth") is None:
        return False, "not installed"
    check = subprocess.run([sys.executable, "-c", "import unsloth"], capture_output=True, text=True)
    if check.returncode == 0:
        return True, f"unsloth {_version('unsloth')}"
    lines = check.stderr.strip().splitlines() or ["unknown error"]
    return False, f"import failed: {lines[-1][:160]}"


def choose_backend(cuda: bool, unsloth_ok: bool, unsloth_why: str) -> tuple[str, str]:
    """'unsloth' wherever it imports (GPU, or its CPU fallback), else 'peft' (transformers + peft)."""
    if cuda and unsloth_ok:
        return "unsloth", "CUDA GPU present and unsloth imports: its fused kernels and offloaded checkpointing run"
    if unsloth_ok:
        return "unsloth", ("no CUDA GPU: unsloth's CPU fallback runs the whole Trinity (QLoRA + DoRA + rsLoRA); "
                           "measured 1.4x the tokens/s of plain peft on this course's CPU "
                           "(data/measurements/unsloth-cpu-fallback.json)")
    where = "CUDA GPU present" if cuda else "no CUDA GPU"
    return "peft", f"{where}, unsloth unavailable ({unsloth_why}): transformers + peft + bitsandbytes"


def import_backend(backend: str) -> None:
    """Import the training backend's library before anything imports transformers.

    unsloth patches transformers' model classes when it is imported; imported later it warns and
    patches less. Call this right after choosing the backend. 'peft' needs nothing.
    """
    if backend == "unsloth":
        importlib.import_module("unsloth")


def validate_environment(compute_dtype: str = "auto") -> EnvironmentReport:
    """Run every check; never raises for a failed check (see `.ok` and `.table()`).

    compute_dtype: "auto" (the policy of `lib.precision`), "bfloat16" or "float32" (forced).
    Raises ValueError for another value.
    """
    report = EnvironmentReport()
    add = report.checks.append
    py_ok = sys.version_info >= (3, 10)
    add(Check("Python", platform.python_version(), py_ok, note="3.10 or newer"))
    add(Check("torch", torch.__version__, True))
    for package in REQUIRED_PACKAGES:
        version = _version(package)
        add(Check(package, version or "missing", version is not None))
    cuda = torch.cuda.is_available()
    add(Check("CUDA", torch.version.cuda or "none" if cuda else "not available", True, required=False,
              note="" if cuda else "CPU path: small models, slow but complete"))
    bf16 = bool(cuda and torch.cuda.is_bf16_supported())
    if cuda:
        props = torch.cuda.get_device_properties(0)
        add(Check("GPU", f"{props.name}, {props.total_memory / 2**30:.1f} GiB", True))
        add(Check("bf16 support", str(bf16), True, required=False))
    try:
        error = nf4_roundtrip_error()
        add(Check("bitsandbytes NF4 round trip", f"rel. error {error:.3f}", error < 0.2))
    except Exception as err:
        add(Check("bitsandbytes NF4 round trip", f"{type(err).__name__}: {err}"[:120], False))
    unsloth_ok, unsloth_why = unsloth_status()
    add(Check("unsloth", unsloth_why, True, required=False))
    free_gib = shutil.disk_usage(".").free / 2**30
    add(Check("free disk", f"{free_gib:.1f} GiB", free_gib > 3, note="model cache and checkpoints need ~3 GiB"))
    report.backend, report.backend_reason = choose_backend(cuda, unsloth_ok, unsloth_why)
    report.device = "cuda" if cuda else "cpu"
    if not cuda:
        report.cpu_speeds = cpu_matmul_speeds()
        features = report.cpu_speeds.features
        add(Check("CPU", f"{features['cpu']}, {features['threads']} threads", True, required=False,
                  note=f"torch kernels {features['torch_capability']}; native bfloat16: "
                       + (", ".join(features["bf16_flags"]) if features["native_bf16"] else "no")))
    report.compute_dtype, report.dtype_reason = choose_compute_dtype(report.device, compute_dtype, gpu_bf16=bf16,
                                                                     cpu_speeds=report.cpu_speeds)
    return report


def quiet_library_logs() -> None:
    """Silence progress bars and advisory warnings of the libraries, so chapters show results.

    Hides weight-loading bars, bitsandbytes' note that the optional `kernels` package (a hub
    download, impossible offline) is missing, torchao's notes on kernels a CPU cannot load, and
    tqdm's ipywidgets notice. Errors still show.
    Works through environment variables and logger levels, without importing transformers
    (see `import_backend` for why the import order matters).
    """
    import logging
    import os
    import warnings

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    logging.getLogger("sqlglot").setLevel(logging.ERROR)  # "unsupported syntax, parsing as a Command"
    # torchao (imported by peft and unsloth) tries its CUDA-only kernels on a CPU torch ("Failed to
    # load ... _C_cutlass_90a.abi3.so") and registers Enums the way torch now deprecates.
    logging.getLogger("torchao").setLevel(logging.ERROR)
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="IProgress not found")


def main() -> int:
    report = validate_environment()
    for row in report.table():
        print(f"{row['status']:5} {row['check']:30} {row['value']}  {row['note']}")
    print(f"backend: {report.backend} ({report.backend_reason})")
    print(f"compute dtype: {report.compute_dtype} ({report.dtype_reason})")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
