"""Data-parallel training on a CPU: two processes (gloo, through `accelerate launch`) against one
process with the same global batch, on the tiny Gemma 3 with an NF4 base and a LoRA adapter."""

from dataclasses import replace

import pytest

from lib.adapter_runs import SHORT_RUN, AdapterRun, run_in_fresh_process
from lib.distributed import as_typed, launch_command

STEPS = 4
# float32 sums in another order (two half-batches, then an all-reduce) round differently: measured
# within 1e-7 relative (2026-12-01, Xeon, torch 2.13 CPU, gloo).
LOSS_TOLERANCE = 1e-5  # relative, per logged step


def short_run(tiny_source, name, batch_size, **changes):
    spec = SHORT_RUN.replace(model=tiny_source.path_or_id, rank=8, use_rslora=True, max_steps=STEPS,
                             batch_size=batch_size, max_seq_length=128, warmup_steps=1, compute_dtype="float32",
                             learning_rate=1e-3, **changes)
    return AdapterRun(name, spec, track_every=0)


def losses(result):
    return [entry["loss"] for entry in result["log"]]


@pytest.fixture(scope="module")
def one_and_two(tiny_source, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp")
    one = run_in_fresh_process(short_run(tiny_source, "one", batch_size=4), folder / "one")
    two = run_in_fresh_process(short_run(tiny_source, "two", batch_size=2), folder / "two", processes=2)
    return one, two, folder


def test_two_processes_follow_one_process_with_the_same_global_batch(one_and_two):
    one, two, _ = one_and_two
    assert one["processes"] == 1 and two["processes"] == 2
    assert len(losses(one)) == len(losses(two)) == STEPS
    assert losses(two) == pytest.approx(losses(one), rel=LOSS_TOLERANCE)
    assert losses(one)[-1] < losses(one)[0]  # it trains, so equal curves are not two flat lines


def test_every_process_ends_with_the_same_adapter(one_and_two):
    _, two, _ = one_and_two
    digests = two["adapter_sha256_by_process"]
    assert len(digests) == 2 and digests[0] == digests[1]
    assert len(two["peak_memory_gib_by_process"]) == 2


def test_a_resumed_two_process_run_continues_the_uninterrupted_one(one_and_two, tiny_source):
    _, two, folder = one_and_two
    run_dir = folder / "resumed"
    whole = short_run(tiny_source, "resumed", batch_size=2, save_steps=STEPS // 2)
    # The schedule is constant after warm-up, so stopping at half the steps is the whole run's first half.
    first = run_in_fresh_process(replace(whole, spec=whole.spec.replace(max_steps=STEPS // 2)), run_dir, processes=2)
    assert (run_dir / "checkpoints" / f"checkpoint-{STEPS // 2}").is_dir()
    resumed = run_in_fresh_process(replace(whole, resume=True), run_dir, processes=2)
    assert len(losses(first)) == STEPS // 2 and len(losses(resumed)) == STEPS  # the log continues
    assert losses(resumed) == pytest.approx(losses(two), rel=LOSS_TOLERANCE)
    # Optimizer, scheduler, data order and every process's RNG restored: bit for bit the same adapter.
    assert resumed["adapter_sha256_by_process"] == two["adapter_sha256_by_process"]


def test_launch_command_runs_one_process_plainly_and_several_through_accelerate():
    assert launch_command("lib.adapter_runs", ["spec.json"])[1:] == ["-m", "lib.adapter_runs", "spec.json"]
    several = launch_command("lib.adapter_runs", ["spec.json"], processes=2)
    assert several[1:4] == ["-m", "accelerate.commands.launch", "--multi_gpu"]
    assert several[several.index("--num_processes") + 1] == "2" and several[-3:] == ["-m", "lib.adapter_runs", "spec.json"]
    one = launch_command("lib.adapter_runs", ["spec.json"], accelerate=True)  # a single GPU's launch
    assert one[1:3] == ["-m", "accelerate.commands.launch"] and "--multi_gpu" not in one
    assert one[one.index("--num_processes") + 1] == "1"
    with pytest.raises(ValueError, match="processes must be >= 1"):
        launch_command("lib.adapter_runs", [], processes=0)


def test_a_launch_command_reads_as_a_user_types_it():
    several = as_typed(launch_command("lib.adapter_runs", ["RUN DIR/spec.json"], processes=2))
    assert several.startswith("accelerate launch --multi_gpu --num_processes 2 ")
    assert several.endswith(" -m lib.adapter_runs 'RUN DIR/spec.json'")  # quoted for the shell
    assert as_typed(launch_command("lib.adapter_runs", ["spec.json"])) == "python -m lib.adapter_runs spec.json"


def test_only_the_main_process_writes_the_status_file(tmp_path, monkeypatch):
    from lib.training import StatusCallback, run_paths

    monkeypatch.setenv("RANK", "1")
    StatusCallback(tmp_path / "run", "cpu").write(step=3)
    assert not run_paths(tmp_path / "run")["status"].exists()
    monkeypatch.setenv("RANK", "0")
    StatusCallback(tmp_path / "run", "cpu").write(step=3)
    assert run_paths(tmp_path / "run")["status"].exists()


def test_the_scale_out_tool_launches_each_row_as_its_mode_needs(monkeypatch, tmp_path):
    """tools.scale_out_gpu (the multi-GPU measurement, GPU-only): DDP rows through accelerate for
    several GPUs, the FSDP2 row with FSDP's flags, torch AdamW, peft's DoRA and the cap; an error
    (out of memory) becomes the row's, and efficiency is against the one-GPU row of the size."""
    import json
    import subprocess

    import tools.scale_out_gpu as tool

    commands = []

    def fake_run(command, **kwargs):
        commands.append(command)
        processes = int(command[command.index("--num_processes") + 1]) if "--num_processes" in command else 1
        if "--cap" in command:
            return subprocess.CompletedProcess(command, 1, "", "torch.OutOfMemoryError: CUDA out of memory.")
        tokens_per_second = 100.0 * processes * 0.9 ** (processes - 1)  # 90% efficiency at 2
        stats = {"steady_seconds_per_step": 1.0, "steady_tokens_per_second": tokens_per_second,
                 "first_step_seconds": 5.0, "peak_memory_gib": 8.0, "cap": {}}
        return subprocess.CompletedProcess(command, 0, "".join(f"STATS {json.dumps(stats)}\n" for _ in range(processes)), "")

    monkeypatch.setattr(tool.subprocess, "run", fake_run)
    rows = [tool.run_row(tmp_path, "4B", n, 4, 1, tmp_path / str(n)) for n in (1, 2)]
    rows.append(tool.run_row(tmp_path, "27B", 2, 4, 1, tmp_path / "fsdp", fsdp=True, cap="L4"))
    rows = tool.with_efficiency(rows)

    one, two, sharded = commands
    assert "accelerate.commands.launch" not in one and "--multi_gpu" in two
    assert {"--optim", "adamw_torch", "--dora", "peft", "--cap", "L4"} <= set(sharded)
    assert "--use_fsdp" in sharded and sharded[sharded.index("--num_processes") + 1] == "2"
    assert [r["scaling_efficiency"] for r in rows] == [1.0, 0.9, None]
    assert rows[1]["peak_reserved_gib_by_process"] == [8.0, 8.0]
    assert "out of memory" in rows[2]["error"] and rows[2]["mode"] == "FSDP2"
