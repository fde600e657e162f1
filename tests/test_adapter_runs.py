import json
import math
import subprocess
import sys

import pytest

from helpers import LIBRARY_NOTES
from lib.adapter_runs import ROOT, SHORT_RUN, AdapterRun, run_in_fresh_process, summarize, train_adapter
from lib.artifacts import read_json, write_json


def log(losses):
    return [{"step": i + 1, "loss": x} for i, x in enumerate(losses)]


def test_summarize_flags_rising_and_non_finite_losses():
    falling = summarize(log([3.0, 2.8, 2.5, 2.2]), [1.0, 0.5, 0.7, 0.6])
    assert not falling["diverged"] and falling["loss_drop"] == pytest.approx(0.8)
    assert falling["median_step_seconds"] == 0.6  # first step (warm-up) left out
    assert summarize(log([2.0, 2.5, 3.0, 4.0]), [1, 1, 1, 1])["diverged"]
    assert summarize(log([2.0, math.nan, 1.0, 1.0]), [1, 1, 1, 1])["diverged"]


def test_a_short_run_records_loss_scaling_updates_and_changes(tiny_source, tmp_path):
    spec = SHORT_RUN.replace(model=tiny_source.path_or_id, rank=4, use_rslora=True, use_dora=True, max_steps=2)
    run = AdapterRun("tiny", spec, track_every=1)
    result = train_adapter(run, tmp_path)
    assert result["peft_scaling"] == pytest.approx(32 / 2)  # alpha / sqrt(4)
    assert [e["step"] for e in result["log"]] == [1, 2]
    assert {r["step"] for r in result["magnitude_direction"]} == {1, 2}
    assert len(result["update_norms"]) == 2 * 7 and all(u["relative_update"] > 0 for u in result["update_norms"])
    assert len(result["step_seconds"]) == 2 and (tmp_path / "result.json").exists()


def test_a_failing_run_raises_with_the_workers_log(tmp_path):
    run = AdapterRun("broken", SHORT_RUN.replace(model=str(tmp_path / "no-such-model"), rank=4, use_rslora=False))
    with pytest.raises(RuntimeError, match="adapter run 'broken' failed") as error:
        run_in_fresh_process(run, tmp_path / "run")
    assert "no-such-model" in str(error.value)
    assert not (tmp_path / "run" / "result.json").exists()


def test_a_run_round_trips_through_its_spec_file_and_refuses_what_short_runs_do_not_do(tmp_path):
    run = AdapterRun("x", SHORT_RUN.replace(rank=8, precision="fp32", compute_dtype="float32"),
                     total_update_modules=("q_proj",), relora_every=4)
    assert AdapterRun.from_dict(json.loads(json.dumps(run.to_dict()))) == run
    checkpointed = AdapterRun("ckpt", SHORT_RUN.replace(gradient_checkpointing="standard"))
    with pytest.raises(ValueError, match="short runs support"):
        train_adapter(checkpointed, tmp_path)


def test_a_forked_run_gives_what_a_new_interpreter_gives(tiny_source, tmp_path):
    """The one-process path forks from the preloading server, which has loaded the first run's
    tokenizer; `python -m lib.adapter_runs` is a new interpreter that loads its own. Same spec, same
    seed: the same losses to the bit, the same thread count. The caller is a new interpreter too, so
    that its server starts for this run (pytest's own may have started for another model)."""
    run = AdapterRun("twin", SHORT_RUN.replace(model=tiny_source.path_or_id, rank=4, max_steps=3), track_every=0,
                     eval_records=2)
    spec = write_json(tmp_path / "spec.json", run.to_dict())
    caller = ("import sys; from lib.adapter_runs import AdapterRun, run_in_fresh_process; from lib.artifacts import "
              "read_json; run_in_fresh_process(AdapterRun.from_dict(read_json(sys.argv[1])), sys.argv[2])")
    subprocess.run([sys.executable, "-c", caller, str(spec), str(tmp_path / "forked")], cwd=ROOT, check=True,
                   capture_output=True)
    forked = read_json(tmp_path / "forked" / "result.json")
    subprocess.run([sys.executable, "-m", "lib.adapter_runs", str(tmp_path / "forked" / "spec.json")], cwd=ROOT,
                   check=True, capture_output=True)
    fresh = read_json(tmp_path / "forked" / "result.json")
    assert forked["tokenizer_preloaded"] and not fresh["tokenizer_preloaded"]
    assert [e["loss"] for e in forked["log"]] == [e["loss"] for e in fresh["log"]]
    assert forked["test_loss"] == fresh["test_loss"] and forked["adapter_sha256_by_process"] == fresh["adapter_sha256_by_process"]
    assert forked["threads_by_process"] == fresh["threads_by_process"]


def test_on_a_cuda_machine_a_run_is_a_new_interpreter_not_a_fork(tmp_path, monkeypatch):
    """peft initializes CUDA when imported (measured on an H200), so a fork of the preloading
    server could not use the GPU: there every run starts its own interpreter."""
    import torch

    import lib.adapter_runs as adapter_runs

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(adapter_runs, "_start_forked", lambda *a: pytest.fail("forked on a CUDA machine"))
    commands = []

    def fake_run(command, cwd, stdout, stderr):
        commands.append(command)
        write_json(tmp_path / "result.json", {"ran": True})
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(adapter_runs.subprocess, "run", fake_run)
    adapter_runs.start_server("gemma-3-270m")  # does nothing there
    assert run_in_fresh_process(AdapterRun("cuda", SHORT_RUN), tmp_path) == {"ran": True}
    assert commands == [[sys.executable, "-m", "lib.adapter_runs", str(tmp_path / "spec.json")]]


# A chapter's process: quiet, start the fork server, then fork one process from it, which waits for
# the server's preloads. The server writes to this process's stderr, as it writes to a notebook's.
QUIET_SERVER = """
import multiprocessing, os
from lib.environment import quiet_library_logs
from lib.adapter_runs import start_server
if __name__ == "__main__":
    quiet_library_logs()
    start_server("gemma-3-270m")
    worker = multiprocessing.get_context("forkserver").Process(target=os.getpid)
    worker.start()
    worker.join()
    print("forked", worker.exitcode)
"""


def test_the_fork_server_does_not_print_the_libraries_import_notes_into_the_chapter():
    result = subprocess.run([sys.executable, "-c", QUIET_SERVER], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.stdout.strip() == "forked 0", result.stderr
    assert not [note for note in LIBRARY_NOTES if note in result.stderr], result.stderr
