import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from transformers import TrainerCallback

from helpers import ROOT, code_records, tiny_run
from lib.artifacts import read_json
from lib.data import tokenize_conversation
from lib.training import last_checkpoint, load_for_training, read_log, run_paths, tokenized_dataset, train

WORKER = ROOT / "tests" / "resume_worker.py"


def test_only_assistant_tokens_carry_loss(tokenizer):
    messages = [{"role": "system", "content": "You write Python."},
                {"role": "user", "content": "Square x."}, {"role": "assistant", "content": "x * x"},
                {"role": "user", "content": "Now cube it."}, {"role": "assistant", "content": "x ** 3"}]
    tokens = tokenize_conversation(tokenizer, messages)
    assert tokens["input_ids"] == tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
    spans, current = [], []
    for token, mask in zip(tokens["input_ids"], tokens["assistant_masks"]):
        if mask:
            current.append(token)
        elif current:
            spans.append(tokenizer.decode(current))
            current = []
    spans.append(tokenizer.decode(current))
    assert spans == ["x * x<end_of_turn>\n", "x ** 3<end_of_turn>\n"]


def test_template_that_is_not_prefix_consistent_is_refused(tokenizer):
    reversed_tokenizer = type(tokenizer).from_pretrained(tokenizer.name_or_path)
    reversed_tokenizer.chat_template = "{% for m in messages|reverse %}{{ m['content'] }}{% endfor %}"
    with pytest.raises(ValueError, match="prefix by prefix"):
        tokenize_conversation(reversed_tokenizer, [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])


def test_dataset_labels_mask_prompt_and_refuse_too_long(tokenizer):
    records = code_records(2)
    dataset = tokenized_dataset(tokenizer, records, 128)
    row = dataset[0]
    kept = [t for t, l in zip(row["input_ids"], row["labels"]) if l != -100]
    assert tokenizer.decode(kept) == records[0].reference + "<end_of_turn>\n"
    with pytest.raises(ValueError, match=r"mem:1: \d+ tokens > max_seq_length 8"):
        tokenized_dataset(tokenizer, records, 8)


class InterruptAt(TrainerCallback):
    """Raises KeyboardInterrupt, as Ctrl-C would, at the end of step `step`."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt


def interrupted_after_step_3(tiny_source, folder):
    """A 5-step run on 10 records, checkpointed every 2 steps, stopped after step 3: (spec, model, tokenizer)."""
    spec = tiny_run(tiny_source, rank=8, max_steps=5, save_steps=2)
    model, tokenizer = load_for_training(spec)
    with pytest.raises(KeyboardInterrupt):
        train(model, tokenizer, code_records(10), spec, folder, "cpu", extra_callbacks=[InterruptAt(3)])
    return spec, model, tokenizer


def test_status_file_and_interrupt_are_recorded(tiny_source, tmp_path):
    interrupted_after_step_3(tiny_source, tmp_path)
    status = read_json(run_paths(tmp_path)["status"])
    assert set(status) == {"running", "step", "total_steps", "epoch", "total_epochs", "loss", "learning_rate",
                           "eta_seconds", "started_at", "checkpoint_at", "error"}
    assert (status["running"], status["step"], status["total_steps"], status["checkpoint_at"]) == (False, 3, 5, 2)
    assert status["error"] == "KeyboardInterrupt" and status["loss"] > 0 and status["eta_seconds"] > 0
    assert last_checkpoint(tmp_path).name == "checkpoint-2"
    assert not list(tmp_path.rglob("*.tmp"))  # atomic writes leave no temporaries


def test_killed_run_resumes_and_its_loss_curve_continues(tiny_source, tmp_path):
    env = os.environ | {"PYTHONPATH": f"{ROOT / 'tests'}{os.pathsep}{ROOT}"}
    reference = tmp_path / "reference"
    subprocess.run([sys.executable, str(WORKER), tiny_source.path_or_id, str(reference), "0"], env=env, check=True,
                   capture_output=True)

    run = tmp_path / "interrupted"
    worker = subprocess.Popen([sys.executable, str(WORKER), tiny_source.path_or_id, str(run), "2"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while not (run / "checkpoints" / "checkpoint-4" / "trainer_state.json").exists():
        assert worker.poll() is None, worker.stdout.read().decode()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.2)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    assert read_json(run_paths(run)["status"])["step"] < 6  # it really stopped early

    rerun = subprocess.run([sys.executable, str(WORKER), tiny_source.path_or_id, str(run), "0"], env=env,
                           capture_output=True, text=True, check=True)
    assert "resumed_from checkpoint-4" in rerun.stdout
    stats = read_json(run_paths(run)["stats"])
    assert stats["resumed_from"] == "checkpoint-4" and stats["steps"] == 6
    resumed, uninterrupted = read_log(run), read_log(reference)
    assert [e["step"] for e in resumed] == [1, 2, 3, 4, 5, 6]
    assert [e["loss"] for e in resumed] == pytest.approx([e["loss"] for e in uninterrupted], rel=1e-3)
    assert (run / "adapter" / "adapter_model.safetensors").exists()

    # Running the finished run again trains nothing more and gives back the same adapter.
    from safetensors.torch import load_file

    trained = load_file(run / "adapter" / "adapter_model.safetensors")
    again = subprocess.run([sys.executable, str(WORKER), tiny_source.path_or_id, str(run), "0"], env=env,
                           capture_output=True, text=True, check=True)
    assert "resumed_from checkpoint-6" in again.stdout
    status = read_json(run_paths(run)["status"])
    assert last_checkpoint(run).name == "checkpoint-6" and (status["step"], status["running"]) == (6, False)
    assert status["loss"] == pytest.approx(read_log(run)[-1]["loss"]) and status["epoch"] > 0
    assert [e["step"] for e in read_log(run)] == [1, 2, 3, 4, 5, 6]
    reloaded = load_file(run / "adapter" / "adapter_model.safetensors")
    assert reloaded.keys() == trained.keys() and all(torch.equal(reloaded[k], trained[k]) for k in trained)


def complete_checkpoint(folder, step):
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}))
    (folder / "adapter_model.safetensors").write_bytes(b"weights")
    (folder / "optimizer.pt").write_bytes(b"state")


def test_a_torn_newest_checkpoint_falls_back_and_stray_folders_are_ignored(tmp_path):
    checkpoints = run_paths(tmp_path)["checkpoints"]
    complete_checkpoint(checkpoints / "checkpoint-2", 2)
    complete_checkpoint(checkpoints / "checkpoint-4", 4)
    (checkpoints / "checkpoint-4" / "trainer_state.json").write_text('{"global_step": 4, "log_hi')  # killed mid-write
    complete_checkpoint(checkpoints / "checkpoint-6 (copy)", 6)
    complete_checkpoint(checkpoints / "checkpoint-8", 8)
    (checkpoints / "checkpoint-8" / "trainer_state.json").write_text("")  # empty
    complete_checkpoint(checkpoints / "checkpoint-9", 9)
    (checkpoints / "checkpoint-9" / "optimizer.pt").unlink()  # killed before the optimizer state was written
    assert last_checkpoint(tmp_path).name == "checkpoint-2"


def test_a_torn_last_log_line_is_left_out_and_a_bad_middle_line_is_named(tmp_path):
    log = run_paths(tmp_path)["log"]
    log.parent.mkdir(parents=True)
    log.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.9}\n{"step": 3, "lo')
    assert [e["step"] for e in read_log(tmp_path)] == [1, 2]
    log.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo\n{"step": 3, "loss": 1.8}\n')
    with pytest.raises(ValueError, match=r"training.log:2: not a JSON log entry"):
        read_log(tmp_path)


def test_a_kill_during_a_checkpoint_save_resumes_from_the_one_before(tiny_source, tmp_path):
    env = os.environ | {"PYTHONPATH": f"{ROOT / 'tests'}{os.pathsep}{ROOT}"}
    reference, run = tmp_path / "reference", tmp_path / "torn"
    subprocess.run([sys.executable, str(WORKER), tiny_source.path_or_id, str(reference), "0"], env=env, check=True,
                   capture_output=True)
    worker = subprocess.Popen([sys.executable, str(WORKER), tiny_source.path_or_id, str(run), "2"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while not (run / "checkpoints" / "checkpoint-4" / "trainer_state.json").exists():
        assert worker.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    state = run / "checkpoints" / "checkpoint-4" / "trainer_state.json"
    state.write_text(state.read_text()[: len(state.read_text()) // 2])  # the save was cut off mid-file
    rerun = subprocess.run([sys.executable, str(WORKER), tiny_source.path_or_id, str(run), "0"], env=env,
                           capture_output=True, text=True, check=True)
    assert "resumed_from checkpoint-2" in rerun.stdout
    assert [e["loss"] for e in read_log(run)] == pytest.approx([e["loss"] for e in read_log(reference)], rel=1e-3)


def test_resuming_with_other_settings_or_data_is_refused(tiny_source, tmp_path):
    spec, model, tokenizer = interrupted_after_step_3(tiny_source, tmp_path)
    with pytest.raises(ValueError, match=r"config.learning_rate: 0.0002 then, 0.001 now"):
        train(model, tokenizer, code_records(10), spec.replace(learning_rate=1e-3), tmp_path, "cpu")
    with pytest.raises(ValueError, match=r"data.sha256"):
        train(model, tokenizer, code_records(12), spec, tmp_path, "cpu")
    longer = spec.replace(max_steps=6)  # more steps: a continuation, allowed
    assert train(model, tokenizer, code_records(10), longer, tmp_path, "cpu").stats["steps"] == 6


def test_a_fresh_start_in_a_used_folder_logs_and_checkpoints_only_its_own_steps(tiny_source, tmp_path):
    longer = tiny_run(tiny_source, rank=4, max_steps=4, save_steps=2)
    model, tokenizer = load_for_training(longer)
    train(model, tokenizer, code_records(8), longer, tmp_path, "cpu", resume=False)
    train(model, tokenizer, code_records(8), longer.replace(max_steps=2), tmp_path, "cpu", resume=False)
    assert [entry["step"] for entry in read_log(tmp_path)] == [1, 2]  # not steps 3-4 of the first run
    # a later resume must not continue from the first run's checkpoint-4
    assert last_checkpoint(tmp_path).name == "checkpoint-2"


def test_seconds_per_example_interpolates_the_measured_step_times():
    from lib.training import seconds_per_example

    measured = {256: 0.3, 512: 0.4, 1024: 0.5}
    assert seconds_per_example(measured, [256]) == pytest.approx(0.3)
    assert seconds_per_example(measured, [384, 768]) == pytest.approx((0.35 + 0.45) / 2)
    assert seconds_per_example(measured, [10, 4000]) == pytest.approx((0.3 + 0.5) / 2)  # clamped at both ends
    with pytest.raises(ValueError, match="need measured step times"):
        seconds_per_example({}, [100])


def test_fast_dora_under_8bit_adamw_trains_its_magnitudes_in_fused_adamw_and_resumes(tiny_source, tmp_path):
    """On a GPU the course's optimizer is bitsandbytes' 8-bit AdamW (here asked for on the CPU):
    the trainer moves fast DoRA's magnitudes into torch's AdamW, saves both parts' state in its
    checkpoints and resumes from them to the same losses as a run never stopped."""
    from lib.fast_dora import ChainedOptimizer

    class Record(TrainerCallback):
        seen = []

        def on_step_end(self, args, state, control, optimizer=None, **kwargs):
            self.seen.append(type(getattr(optimizer, "optimizer", optimizer)))  # inside accelerate's wrapper

    spec = tiny_run(tiny_source, rank=4, max_steps=4, save_steps=2, optim="adamw_8bit")
    model, tokenizer = load_for_training(spec)
    reference = train(model, tokenizer, code_records(8), spec, tmp_path / "reference", "cpu",
                      extra_callbacks=[Record()])
    assert set(Record.seen) == {ChainedOptimizer}
    model, tokenizer = load_for_training(spec)
    with pytest.raises(KeyboardInterrupt):
        train(model, tokenizer, code_records(8), spec, tmp_path / "run", "cpu",
              extra_callbacks=[Record(), InterruptAt(3)])
    model, tokenizer = load_for_training(spec)
    resumed = train(model, tokenizer, code_records(8), spec, tmp_path / "run", "cpu")
    assert resumed.stats["resumed_from"] == "checkpoint-2" and resumed.stats["steps"] == 4
    assert [e["loss"] for e in read_log(tmp_path / "run")] == pytest.approx(
        [e["loss"] for e in read_log(tmp_path / "reference")], rel=1e-3)
    # both parts' moments went on from checkpoint-2's: 4 steps each, not 2 after a fresh start
    saved = torch.load(last_checkpoint(tmp_path / "run") / "optimizer.pt", weights_only=False)["chained"]
    assert len(saved) == 2 and saved[1]["state"] and reference.stats["steps"] == 4
    assert {float(s["step"]) for part in saved for s in part["state"].values()} == {4.0}
