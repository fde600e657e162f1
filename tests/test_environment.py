import subprocess
import sys

import torch

from helpers import ROOT
from lib.environment import choose_backend, choose_compute_dtype, validate_environment


def test_validate_environment_on_this_machine():
    report = validate_environment()
    rows = {row["check"]: row for row in report.table()}
    assert report.ok
    assert rows["bitsandbytes NF4 round trip"]["status"] == "PASS"
    assert report.backend == ("unsloth" if rows["unsloth"]["value"].startswith("unsloth ") else "peft")
    assert "unsloth" not in sys.modules  # checked in a child process: no patching of this one


def test_backend_and_precision_rules():
    assert choose_backend(True, True, "")[0] == "unsloth"
    assert choose_backend(False, True, "")[0] == "unsloth"  # its CPU fallback
    backend, why = choose_backend(True, False, "not installed")
    assert backend == "peft" and "not installed" in why
    assert choose_backend(False, False, "import failed: x")[0] == "peft"
    assert choose_compute_dtype(True, True)[0] == torch.bfloat16
    assert choose_compute_dtype(True, False)[0] == torch.float32  # T4: Gemma 3 overflows float16


def test_command_line_check():
    result = subprocess.run([sys.executable, "-m", "lib.environment"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "backend:" in result.stdout and "PASS" in result.stdout
