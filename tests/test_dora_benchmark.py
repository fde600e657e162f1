"""tools/dora_benchmark.py's bookkeeping, without a GPU: which rows a rerun runs again."""

import json
import subprocess

import tools.dora_benchmark as benchmark


def test_a_rerun_runs_again_only_the_rows_whose_process_failed(tmp_path, monkeypatch):
    row = {"size": "4B", "seq": 2048, "backend": "unsloth", "cap": None}
    finished = [row | {"variant": "LoRA", "step_seconds": 0.2, "peak_allocated_gib": 4.0},
                row | {"variant": "DoRA (fast)", "error": "RuntimeError: the process failed"},
                row | {"variant": "DoRA (peft)", "error": "OutOfMemoryError: ...", "steps_done": 1}]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in finished))
    ran = []

    def measured_in_a_child(command, **kwargs):
        job = json.loads(command[command.index("--one") + 1])
        ran.append(job["variant"])
        row = job | {"step_seconds": 0.3, "peak_allocated_gib": 4.1}
        return subprocess.CompletedProcess(command, 0, f"ROW {json.dumps(row)}\n", "")

    monkeypatch.setattr(benchmark.subprocess, "run", measured_in_a_child)
    monkeypatch.setattr(benchmark, "random_init_checkpoint_apart", lambda *args, **kwargs: None)
    monkeypatch.setattr(benchmark, "provenance", lambda command: {"command": command})
    benchmark.main([str(tmp_path), "--work", str(tmp_path), "--out", str(tmp_path / "out.json"), "--sizes", "4B",
                    "--variants", "LoRA", "DoRA (fast)", "DoRA (peft)"])
    assert ran == ["DoRA (fast)"]  # measured and out-of-memory rows are results; the failed one is not
    rows = json.loads((tmp_path / "out.json").read_text())["rows"]
    assert [(r["variant"], r.get("step_seconds"), "error" in r) for r in rows] == [
        ("LoRA", 0.2, False), ("DoRA (fast)", 0.3, False), ("DoRA (peft)", None, True)]


def test_gpu_idle_charges_each_gap_to_the_innermost_host_op_around_it():
    kernels = [(0, 100), (50, 120), (200, 300), (305, 400), (1000, 1100)]  # gaps: 120-200, 400-1000 (300-305 too short)
    host = [(0, 2000, "step"), (100, 250, "step > launch"), (500, 900, "step > optimizer")]
    idle = benchmark.gpu_idle(kernels, host, min_gap_us=20)
    assert idle["gaps"] == 2 and idle["idle_ms"] == 0.68
    assert idle["by_host_op"] == [{"name": "step > optimizer", "ms": 0.6, "gaps": 1},
                                  {"name": "step > launch", "ms": 0.08, "gaps": 1}]
    assert benchmark.gpu_idle(kernels, [], min_gap_us=20)["by_host_op"][0]["name"] == "(none)"


def test_paired_ratios_compare_each_round_with_lora_in_the_same_round():
    # a slow spell (rounds 2-3) slows both: the paired ratio stays 1.1, a ratio of medians would not
    times = {"LoRA": [9.0, 1.0, 2.0, 2.0, 1.0], "DoRA (fast)": [9.0, 1.1, 2.2, 2.2, 1.1]}
    stats = benchmark.paired_ratios(times, warmup=1)
    assert stats["DoRA (fast)"]["time_vs_lora_paired"] == 1.1
    assert stats["DoRA (fast)"]["time_vs_lora_range"] == [1.1, 1.1]
    assert stats["LoRA"]["step_seconds"] == 1.5 and stats["LoRA"]["time_vs_lora_paired"] == 1.0
    assert benchmark.paired_ratios({"DoRA (fast)": [1.0, 2.0]}, warmup=0)["DoRA (fast)"]["time_vs_lora_paired"] is None


def test_an_interleaved_size_is_one_process_and_a_row_per_variant(tmp_path, monkeypatch):
    jobs = []

    def measured_in_a_child(command, **kwargs):
        job = json.loads(command[command.index("--one") + 1])
        jobs.append(job)
        rows = [{k: v for k, v in job.items() if k != "variants"} | {
            "variant": v, "interleaved": job["variants"], "step_seconds": 0.2 + 0.02 * i, "peak_allocated_gib": None,
            "time_vs_lora_paired": 1 + 0.1 * i} for i, v in enumerate(job["variants"])]
        return subprocess.CompletedProcess(command, 0, "".join(f"ROW {json.dumps(r)}\n" for r in rows), "")

    monkeypatch.setattr(benchmark.subprocess, "run", measured_in_a_child)
    monkeypatch.setattr(benchmark, "random_init_checkpoint_apart", lambda *args, **kwargs: None)
    monkeypatch.setattr(benchmark, "provenance", lambda command: {"command": command})
    arguments = [str(tmp_path), "--work", str(tmp_path), "--out", str(tmp_path / "out.json"), "--sizes", "4B",
                 "--variants", "LoRA", "DoRA (fast)", "--interleave"]
    benchmark.main(arguments)
    assert [j["variants"] for j in jobs] == [["LoRA", "DoRA (fast)"]]
    rows = json.loads((tmp_path / "out.json").read_text())["rows"]
    assert [(r["variant"], r["interleaved"]) for r in rows] == [("LoRA", ["LoRA", "DoRA (fast)"]),
                                                                 ("DoRA (fast)", ["LoRA", "DoRA (fast)"])]
    assert "| 1.10 |" in benchmark.table(rows)  # the paired ratio, not the ratio of the medians
    benchmark.main(arguments)
    assert len(jobs) == 1  # measured: a rerun skips it


def test_interleaved_rows_take_no_memory_cap(tmp_path):
    import pytest

    with pytest.raises(SystemExit):
        benchmark.main([str(tmp_path), "--work", str(tmp_path), "--out", str(tmp_path / "out.json"), "--interleave",
                        "--cap", "L4"])
    with pytest.raises(ValueError, match="no cap"):
        benchmark.measure_interleaved("4B", 2048, "unsloth", ["LoRA"], tmp_path, 1, 0, cap="L4")
