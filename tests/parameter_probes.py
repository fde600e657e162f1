"""Probes for the training chapters' parameters: each reads back, from what an executed chapter
wrote or showed, the value of one parameter that took effect (tests/test_chapters.py).

A chapter listed in PROBES has every parameter of its parameters cell changed from its default,
in the smoke run (tools.course.SMOKE_PARAMETERS, plus MADE_SMOKE_VALUES: files made for the test)
or in one more run of that chapter (EXTRA_RUNS, for changes the later chapters' smoke runs should
not see), and a probe for each (or a reason in NOT_CHANGED): the test fails
if a probe reads back anything but the value the run was given. Probes read effects where the run
leaves them (the adapter's config as peft saved it, the checkpoints' trainer state and arguments,
generation lengths and batches, files written); where a parameter only shapes what the chapter
prints (the spec chapter 05 estimates, the adapter path chapter 07 exports), the printed value.
The other chapters are checked statically (tests/test_parameters.py) and 00, 02 and 03 by one run
per parameter there.
"""

from __future__ import annotations

import ast
import json
import re
from collections import Counter
from pathlib import Path

import nbformat

from helpers import ROOT, parameters_cell


class Shown:
    """What one executed chapter left: its notebook's outputs and its run folder."""

    def __init__(self, notebook: Path, given: dict, defaults: dict):
        self.notebook = nbformat.read(notebook, as_version=4)
        self.given, self.defaults = given, defaults  # the chapter's parameters: as run, and as written
        self.output_dir, self.run_name = Path(given["output_dir"]), given["run_name"]
        self.run_dir = self.output_dir / self.run_name

    def text(self) -> str:
        """Every code cell's text outputs, joined."""
        return "\n".join(o.get("text", "") or o.get("data", {}).get("text/plain", "")
                         for c in self.notebook.cells if c.cell_type == "code" for o in c.get("outputs", []))

    def find(self, pattern: str, cast=str):
        """The first group of `pattern`'s first match in the outputs, cast; AssertionError if none."""
        match = re.search(pattern, self.text())
        assert match, f"no output matches {pattern!r}"
        return cast(match.group(1))

    def json(self, relative: str):
        return json.loads((self.run_dir / relative).read_text(encoding="utf-8"))

    def training_args(self, run: str = ""):
        """The TrainingArguments the Trainer ran with, as it saved them in the last checkpoint (of
        the training run in folder `run` of the run folder: a short run's)."""
        import torch

        return torch.load(self.last_checkpoint(run) / "training_args.bin", weights_only=False)

    def last_checkpoint(self, run: str = "") -> Path:
        return max((self.run_dir / run / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))

    def trainer_state(self, run: str = "") -> dict:
        """The last checkpoint's trainer_state.json (transformers' record of the run)."""
        return json.loads((self.last_checkpoint(run) / "trainer_state.json").read_text(encoding="utf-8"))


def defaults(stem: str, root: Path) -> dict:
    """The chapter's parameters and their default values (the cell holds literals only)."""
    cell, _ = parameters_cell(root / "chapters" / f"{stem}.py")
    return {target.id: ast.literal_eval(node.value) for node in ast.parse(cell).body for target in node.targets}


def fresh(shown: Shown, path: Path) -> bool:
    """Whether `path` exists and was written during this execution of the chapter."""
    from datetime import datetime

    started = datetime.fromisoformat(shown.notebook.metadata["papermill"]["start_time"]).timestamp()
    return path.exists() and path.stat().st_mtime >= started - 1


DATA_PARALLEL = "scale-out/data-parallel"  # chapter 11's data-parallel short run (lib.adapter_runs)
MARKERS = {"11_scale_out": f"{DATA_PARALLEL}/result.json"}  # chapters without a claims ledger


def stem_of(shown: Shown) -> str:
    return Path(shown.notebook.metadata["papermill"]["input_path"]).stem.removesuffix(".source")


def marker(shown: Shown) -> str:
    """A file each execution of the chapter writes in its run folder (relative to it)."""
    return MARKERS.get(stem_of(shown), f"claims/{stem_of(shown)}.json")


def run_folder(shown: Shown) -> str:
    """The run folder's name: the one folder under output_dir this execution wrote its marker into."""
    names = [p.name for p in shown.output_dir.glob("*") if fresh(shown, p / marker(shown))]
    assert len(names) == 1, names
    return names[0]


def output_folder(shown: Shown, root: Path) -> str:
    """Where this execution wrote its run folder: the given output_dir or the default, root/output."""
    written = [str(folder) for folder in (shown.output_dir, root / "output")
               if fresh(shown, folder / shown.run_name / marker(shown))]
    assert len(written) == 1, written
    return written[0]


def shown_file(shown: Shown, name: str, marker) -> str:
    """Which file the chapter read for parameter `name`: the given one or its default, told apart by
    `marker(its JSON)` appearing in the outputs (exactly one of them must)."""
    paths = {shown.given[name], shown.defaults[name]}
    seen = [p for p in paths if str(marker(json.loads((ROOT / p).read_text(encoding="utf-8")))) in shown.text()]
    assert len(seen) == 1, f"{name}: shown {seen} of {paths}"
    return seen[0]


def peak_learning_rate_step(state: dict) -> int:
    """The first logged step at the run's highest learning rate."""
    logged = [(r["step"], r["learning_rate"]) for r in state["log_history"] if "learning_rate" in r]
    peak = max(rate for _, rate in logged)
    return min(step for step, rate in logged if rate == peak)


def generations(shown: Shown, model: str) -> list[dict]:
    return shown.json("metrics/evaluation.json")["examples"][model]


def largest_batch(rows: list[dict]) -> int:
    """How many generations the largest batch held (lib.evaluation records each one's batch)."""
    return max(Counter(r["batch"] for r in rows).values())


def linked_adapter(folder: Path, parameters: dict) -> str:
    """A symlink to the adapter chapter 04's smoke run will write (dangling until then): the same
    adapter reached through another path, which chapter 07 names when it exports it."""
    link = folder / "linked-adapter"
    link.symlink_to(Path(parameters["*"]["output_dir"]) / parameters["*"]["run_name"] / "adapter")
    return str(link)


def linked_model(folder: Path, parameters: dict | None = None) -> str:
    """The embedded model's converted folder reached through a symlink in `folder`: the same weights
    as a local folder path, which the run records where the alias would record the cache's path."""
    from lib.model import resolve_model

    link = folder / "linked-model"
    if not link.is_symlink():  # one link serves every chapter given it
        link.symlink_to(resolve_model("gemma-3-270m").path_or_id)
    return str(link)


def dated_transcript(folder: Path, parameters: dict | None = None) -> str:
    """A copy of chapter 05's stored GPU transcript whose provenance date says it is the copy."""
    data = json.loads((ROOT / "data" / "measurements" / "oom-ladder-gpu.json").read_text(encoding="utf-8"))
    data["provenance"]["date"] = "1999-12-31"
    path = folder / "oom-ladder-copy.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return str(path)


# Changes the later chapters' smoke runs must not see (they read chapter 04's adapter) or that need
# a file made for the test (a callable of a scratch folder and the parameters): made in one more run of the chapter,
# in a copy of its smoke run folder (so `resume` has a checkpoint to act on).
EXTRA_RUNS = {
    "04_trinity_training": {"rank": 16, "alpha": 8, "use_rslora": False, "use_dora": False, "seed": 7,
                            "learning_rate": 1e-4, "gradient_accumulation_steps": 2, "backend": "peft",
                            "compute_dtype": "float32", "resume": False, "model_name": linked_model},
    "05_oom_ladder": {"model_name": linked_model, "gpu_transcript": dated_transcript},
}

PROBES = {
    "04_trinity_training": {
        "model_name": lambda s: s.json("run-spec.json")["base_model"],
        "run_name": run_folder,
        "output_dir": lambda s: output_folder(s, ROOT),
        "max_steps": lambda s: s.trainer_state()["global_step"],
        "max_seq_length": lambda s: s.json("run-spec.json")["config"]["max_seq_length"],
        "rank": lambda s: s.json("adapter/adapter_config.json")["r"],
        "alpha": lambda s: s.json("adapter/adapter_config.json")["lora_alpha"],
        "use_rslora": lambda s: s.json("adapter/adapter_config.json")["use_rslora"],
        "use_dora": lambda s: s.json("adapter/adapter_config.json")["use_dora"],
        # unsloth announces the model it loads; the peft backend loads it silently
        "backend": lambda s: "unsloth" if "Unsloth (CPU): Gemma3ForCausalLM" in s.text() else "peft",
        "compute_dtype": lambda s: s.json("metrics/training-stats.json")["compute_dtype"],
        "seed": lambda s: s.training_args().seed,
        "batch_size": lambda s: s.trainer_state()["train_batch_size"],
        # examples per optimizer step over the micro-batch: the epoch the first step reached x examples / batch
        "gradient_accumulation_steps": lambda s: round(s.trainer_state()["log_history"][0]["epoch"] *
                                                       s.json("run-spec.json")["data"]["examples"] /
                                                       s.trainer_state()["train_batch_size"]),
        # the scheduler's peak: linear warm-up to the learning rate, then linear decay
        "learning_rate": lambda s: max(r["learning_rate"] for r in s.trainer_state()["log_history"] if "learning_rate" in r),
        # the step logged at the peak learning rate is the first after the warm-up
        "warmup_steps": lambda s: peak_learning_rate_step(s.trainer_state()) - 1,
        "save_steps": lambda s: min(int(p.name.split("-")[1]) for p in (s.run_dir / "checkpoints").glob("checkpoint-*")),
        "sample_every": lambda s: min(json.loads(line)["step"] for line in
                                      (s.run_dir / "logs" / "samples.jsonl").read_text().splitlines()),
        "sample_max_new_tokens": lambda s: max(json.loads(line)["new_tokens"] for line in
                                               (s.run_dir / "logs" / "samples.jsonl").read_text().splitlines()),
        # a resumed run would refuse the changed adapter (check_resume); a fresh one trains every step
        "resume": lambda s: s.json("metrics/training-stats.json")["resumed_from"] is not None or
                            s.json("metrics/training-stats.json")["steps"] != s.trainer_state()["global_step"],
    },
    "05_oom_ladder": {
        "model_name": lambda s: s.find(r"the local ladder trains (\S+) on"),  # the model loaded (a path)
        "run_name": run_folder,
        "output_dir": lambda s: output_folder(s, ROOT),
        # section 1: the spec the estimator read, as `RunSpec.describe` prints it ("as asked: ...")
        "model_size": lambda s: s.find(r"as asked: (\S+) "),
        "gpu": lambda s: s.find(r"Gemma 3 \S+ on (\S+) \("),
        "backend": lambda s: s.find(r"as asked: .*\((\w+)\)"),
        "max_seq_length": lambda s: s.find(r"as asked: .* seq=(\d+) ", int),
        "rank": lambda s: s.find(r"as asked: \S+ \S+ r=(\d+) ", int),
        "use_dora": lambda s: s.find(r"as asked: \S+ \S+ r=\d+ (DoRA|LoRA) ") == "DoRA",
        "batch_size": lambda s: s.find(r"as asked: .* batch=(\d+)x", int),
        # section 3: the ladder run on this machine (its first attempt, and the simulated GPU's error)
        "demo_seq_length": lambda s: s.find(r"0\s+as asked\s+seq (\d+), r=", int),
        "demo_budget_gib": lambda s: s.find(r"CUDA out of memory \(([0-9.]+) GiB GPU, simulated\)", float),
        # counted by the simulated GPU's optimizer hook: a refused attempt takes none
        "demo_steps": lambda s: s.find(r"(\d+) optimizer steps taken", int),
        "gpu_transcript": lambda s: shown_file(s, "gpu_transcript", lambda data: data["provenance"]["date"]),
    },
    "06_evaluate": {
        "model_name": lambda s: s.json("metrics/evaluation.json")["base_model"],  # the base the adapter ran on
        "run_name": run_folder,
        "output_dir": lambda s: output_folder(s, ROOT),
        "eval_limit": lambda s: s.find(r"(\d+) test records from", int),
        "generate_n": lambda s: len(generations(s, "base")) - s.find(r"\((\d+) of them added for their doctests", int),
        "max_new_tokens": lambda s: max(r["new_tokens"] for rows in s.json("metrics/evaluation.json")["examples"].values()
                                        for r in rows),
        "eval_batch_size": lambda s: largest_batch(generations(s, "base")),
        "repetition_penalty": lambda s: float(next(k for k in s.json("metrics/evaluation.json")["results"]
                                                   if "repetition penalty" in k).rsplit(" ", 1)[1]),
        "prompt_shots": lambda s: len(s.json("metrics/evaluation.json")["prompt_examples"]),
        "min_loss_drop": lambda s: s.find(r"lower, need (\d+)%\)", int) / 100,
        "min_task_gain": lambda s: s.find(r"points, need \+(\d+)\)", float),
        "max_p_value": lambda s: s.find(r"need < ([0-9.]+)\)", float),
        "compute_dtype": lambda s: s.json("metrics/evaluation.json")["compute_dtype"],
    },
    "07_export": {  # metrics/export.json: every model's results and generations
        "run_name": run_folder,
        "output_dir": lambda s: output_folder(s, ROOT),
        "adapter_dir": lambda s: s.find(r"exporting (\S+) \(base"),  # the adapter it copied and merged
        "quantizations": lambda s: sorted(p.stem.removeprefix("model-") for p in (s.run_dir / "export" / "gguf").glob(
            "model-*.gguf") if fresh(s, p) and p.stem != "model-f16"),
        "eval_limit": lambda s: s.find(r"; (\d+) test records", int),
        "generate_n": lambda s: len(s.json("metrics/export.json")["examples"]["merged bf16"]),
        "max_new_tokens": lambda s: max(r["new_tokens"] for rows in s.json("metrics/export.json")["examples"].values()
                                        for r in rows),
        "eval_batch_size": lambda s: largest_batch(s.json("metrics/export.json")["examples"]["merged bf16"]),
        "n_ctx": lambda s: {r["n_ctx"] for k, r in s.json("metrics/export.json")["results"].items()
                            if k.startswith("GGUF")}.pop(),
        "compare_original_merge": lambda s: fresh(s, s.run_dir / "export" / "merged-into-original" / "config.json"),
        "max_relative_change": lambda s: int(re.search(r"need within (\d+)%", s.json("metrics/export-gates.json")[0]
                                                       ["detail"]).group(1)) / 100,  # what the gates judged by
        "compute_dtype": lambda s: s.json("metrics/export.json")["results"]["merged bf16"]["compute_dtype"],
    },
    "11_scale_out": {  # the data-parallel run's folder (lib.adapter_runs) and the FSDP check's rows
        "model_name": lambda s: s.json(f"{DATA_PARALLEL}/run-spec.json")["base_model"],
        "run_name": run_folder,
        "output_dir": lambda s: output_folder(s, ROOT),
        "compute_dtype": lambda s: s.json(f"{DATA_PARALLEL}/result.json")["compute_dtype"],
        "batch_size": lambda s: s.trainer_state(DATA_PARALLEL)["train_batch_size"],
        "steps": lambda s: len(s.json(f"{DATA_PARALLEL}/result.json")["log"]),
        "max_seq_length": lambda s: s.json(f"{DATA_PARALLEL}/run-spec.json")["config"]["max_seq_length"],
        "rank": lambda s: s.json(f"{DATA_PARALLEL}/adapter/adapter_config.json")["r"],
        "learning_rate": lambda s: max(r["learning_rate"] for r in s.json(f"{DATA_PARALLEL}/result.json")["log"]),
        "seed": lambda s: s.training_args(DATA_PARALLEL).seed,
        "fsdp_steps": lambda s: len(s.json("scale-out/fsdp.json")[0]["losses"]),
        "fsdp_window": lambda s: s.json("scale-out/fsdp.json")[0]["window_tokens"],
        "fsdp_storages": lambda s: list(dict.fromkeys(r["storage"] for r in s.json("scale-out/fsdp.json"))),
    },
}

COLAB_ONLY = {"course_repo"}  # acts in the setup cell on Colab only: tests/test_colab_boot.py boots it

# Values made for the smoke runs themselves (a callable of a scratch folder and the smoke
# parameters), where no later chapter reads what they change: tests/test_chapters.py adds them to
# tools.course.SMOKE_PARAMETERS.
MADE_SMOKE_VALUES = {"06_evaluate": {"model_name": linked_model},
                     "07_export": {"adapter_dir": linked_adapter},
                     "11_scale_out": {"model_name": linked_model}}

# Parameters no run here can change, with the reason (checked to be parameters of the chapter).
NOT_CHANGED = {
    "07_export": {"model_name": "another name for the same base is a local folder, and llama.cpp's converter "
                                "needs that folder's tokenizer.model, which the course rebuilds only for the "
                                "embedded alias (the converted folder has none; offline, nothing else provides it)"},
    "11_scale_out": {"processes": "the smoke run needs 2 to compare data-parallel with one process, and 3 "
                                  "processes of the 270M plus the FSDP check took 8.4 GiB at 2 beside the other "
                                  "test worker; tests/test_distributed.py launches 1 and 2 through the same "
                                  "call (run_in_fresh_process)"},
}
