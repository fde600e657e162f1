import subprocess
import sys

import torch

from helpers import LIBRARY_NOTES, ROOT
from lib.environment import choose_backend, validate_environment


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


def test_the_report_carries_the_policy_and_a_forced_dtype():
    forced = validate_environment("float32")
    assert forced.compute_dtype == torch.float32 and "compute_dtype parameter" in forced.dtype_reason
    if forced.device == "cpu":  # the measurement behind "auto" is in the report, and shown by chapter 00
        assert set(forced.cpu_speeds.gflops) == {"float32", "bfloat16"}
        assert any(row["check"] == "CPU" for row in forced.table())


def test_command_line_check():
    result = subprocess.run([sys.executable, "-m", "lib.environment"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "backend:" in result.stdout and "PASS" in result.stdout


def test_package_versions_name_what_is_installed_and_skip_what_is_not():
    import torch

    from lib.environment import package_versions

    assert package_versions(("torch", "no-such-package-here")) == {"torch": torch.__version__}


def test_quiet_library_logs_hides_import_notes():
    """The book shows cells' stderr: importing peft (which imports torchao and bitsandbytes) must
    not print notes on kernels this machine cannot load, or torch's deprecation of torchao's Enum
    registrations."""
    code = "from lib.environment import quiet_library_logs; quiet_library_logs(); import peft"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert not [note for note in LIBRARY_NOTES if note in result.stderr], result.stderr
