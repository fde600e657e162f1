"""lib.oom_ladder: rung order, prediction-driven start, recovery from an OOM raised inside a real
training step (the failed attempt's model is freed), and the "will it fit?" command line."""

import subprocess
import sys

import pytest
import torch

from lib import memory, oom_ladder
from lib.memory import gpu_run


def test_rungs_are_cumulative_in_the_source_order_then_the_extra_ones():
    names = [name for name, _ in oom_ladder.ladder(gpu_run("12B", max_seq_length=4096, batch_size=4))]
    assert names == ["as asked", "seq -> 2048", "rank -> 32", "DoRA off", "targets q_proj, v_proj",
                     "batch 1 + gradient accumulation", "paged 8-bit AdamW", "seq -> 1024", "seq -> 512"]
    last = oom_ladder.ladder(gpu_run("12B", max_seq_length=4096, batch_size=4))[-1][1]
    o, a = last.optimisation, last.adapter
    assert (o.max_seq_length, a.rank, a.use_dora, a.target_modules, o.batch_size, o.gradient_accumulation_steps,
            o.optim) == (512, 32, False, ("q_proj", "v_proj"), 1, 4, "paged_adamw_8bit")
    # rungs that change nothing are dropped
    short = [n for n, _ in oom_ladder.ladder(gpu_run("1B", max_seq_length=1024, rank=16, use_dora=False))]
    assert "seq -> 2048" not in short and "rank -> 32" not in short and "DoRA off" not in short


def fake_attempt(fits_below_gib, calls):
    def attempt(spec):
        calls.append(spec)
        peak = memory.estimate(spec).peak_allocated
        if peak > fits_below_gib:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return peak
    return attempt


def test_start_at_the_first_rung_predicted_to_fit():
    calls = []
    spec = gpu_run("12B", backend="peft")
    result = oom_ladder.run_ladder(spec, 14.56, fake_attempt(100, calls), log=lambda _: None)
    first_fit = next(s for _, s in oom_ladder.ladder(spec) if memory.estimate(s).total <= 14.56)
    assert calls == [first_fit]
    assert [a.outcome for a in result.attempts if a.outcome != "skipped"] == ["ok"]


def test_a_real_oom_steps_down_until_one_trains():
    calls = []
    third_rung = memory.estimate(oom_ladder.ladder(gpu_run("12B"))[2][1]).peak_allocated  # fits; the two above do not
    result = oom_ladder.run_ladder(gpu_run("12B"), 100, fake_attempt(third_rung, calls), start="top",
                                   log=lambda _: None)
    outcomes = [a.outcome for a in result.attempts]
    assert outcomes == ["oom", "oom", "ok"]
    assert result.chosen.measured_peak_gib <= third_rung
    assert all("out of memory" in a.error for a in result.attempts[:-1])


def test_other_errors_are_not_swallowed():
    def broken(spec):
        raise ValueError("bad data in train.jsonl line 3")

    with pytest.raises(ValueError, match="line 3"):
        oom_ladder.run_ladder(gpu_run("1B"), 100, broken, start="top", log=lambda _: None)
    with pytest.raises(ValueError, match="start"):
        oom_ladder.run_ladder(gpu_run("1B"), 100, broken, start="middle")


def test_every_rung_failing_returns_no_choice():
    result = oom_ladder.run_ladder(gpu_run("12B"), 100, fake_attempt(0.1, []), start="top", log=lambda _: None)
    assert result.chosen is None and all(a.outcome == "oom" for a in result.attempts)


def test_recovery_frees_the_failed_training_step(tiny_source):
    """An OOM raised inside a real forward pass keeps the model alive through its traceback;
    after the ladder's recovery nothing of the failed attempts survives."""
    probe = oom_ladder.probe_attempt(tiny_source.path_or_id, steps=1)
    # a small GPU: only the rungs without DoRA fit
    with oom_ladder.SimulatedGPU(probe, fits=lambda spec: not spec.adapter.use_dora) as gpu:
        result = oom_ladder.run_ladder(gpu_run(tiny_source.path_or_id, backend="peft", rank=8, max_seq_length=32), 100,
                                       gpu.attempt, start="top", log=lambda _: None)
    assert [a.outcome for a in result.attempts] == ["oom", "ok"]
    assert len(gpu.models_seen) >= 2 and gpu.models_alive() == 0
    assert gpu.optimizer_steps == 1  # the refused attempt stepped nothing; the one that fit, its one step


def test_will_it_fit_command_line():
    done = subprocess.run([sys.executable, "-m", "lib.oom_ladder", "12B", "T4"], capture_output=True, text=True,
                          env={"COLUMNS": "160", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    expected = oom_ladder.recommend("12B", "T4")[0]
    assert f"recommended: {expected}" in done.stdout and "as asked" in done.stdout
    bad = subprocess.run([sys.executable, "-m", "lib.oom_ladder", "12B", "V100"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown GPU 'V100'" in bad.stderr
    nothing = subprocess.run([sys.executable, "-m", "lib.oom_ladder", "27B", "T4", "--backend", "peft"],
                             capture_output=True, text=True, env={"COLUMNS": "160", "PATH": "/usr/bin:/bin"})
    assert nothing.returncode == 1 and "no rung fits" in nothing.stdout


def test_names_in_any_case_and_numbers_in_range():
    lower = oom_ladder.main(["12b", "t4"])
    assert lower == 0  # the same answer as "12B T4"
    for flag, value in (("--rank", "1e9"), ("--rank", "0"), ("--seq", "999999999"), ("--batch", "-1")):
        bad = subprocess.run([sys.executable, "-m", "lib.oom_ladder", "12B", "T4", flag, value], capture_output=True,
                             text=True)
        assert bad.returncode == 2 and f"argument {flag}" in bad.stderr, (flag, value, bad.stderr)
