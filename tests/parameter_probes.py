"""Probes for the training chapters' parameters: each reads back, from what an executed chapter
wrote or showed, the value of one parameter that took effect (tests/test_chapters.py).

A chapter listed in PROBES has every parameter of its parameters cell changed from its default,
in the smoke run (tools.course.SMOKE_PARAMETERS, plus MADE_SMOKE_VALUES: files made for the test)
or in one more run of that chapter (EXTRA_RUNS, for changes the later chapters' smoke runs should
not see or its smoke run needs as they are), and a probe for each (or a reason in NOT_CHANGED,
empty today): the test fails if a probe reads back anything but the value the run was given. Probes read effects where the run
leaves them (the adapter's config as peft saved it, the checkpoints' trainer state and arguments,
generation lengths and batches, files written); where a parameter only shapes what the chapter
prints (the spec chapter 05 estimates, the adapter path chapter 07 exports), the printed value.
Chapters 00, 02 and 03 are short enough for one run per parameter (tests/test_parameters.py).
"""

from __future__ import annotations

import ast
import json
import math
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


def adapter_shape(folder: str) -> dict:
    """Probes of rank, alpha, use_rslora and use_dora: the adapter config peft saved in `folder`
    of the run folder."""
    def saved(key):
        return lambda shown: shown.json(f"{folder}/adapter_config.json")[key]

    return {"rank": saved("r"), "alpha": saved("lora_alpha"), "use_rslora": saved("use_rslora"),
            "use_dora": saved("use_dora")}


def backend_shown(shown: Shown) -> str:
    """The training backend: unsloth announces the model it loads; the peft backend loads it silently."""
    return "unsloth" if "Unsloth (CPU): Gemma3ForCausalLM" in shown.text() else "peft"


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


def smaller_dataset(folder: Path, parameters: dict | None = None) -> str:
    """The embedded dataset with the first 120 of its training records: another dataset folder,
    which chapter 01's short runs must train on (fewer examples than the default's)."""
    source, copy = ROOT / "data" / "python-stdlib", folder / "python-stdlib-120"
    copy.mkdir()
    for split in ("train", "val", "test"):
        lines = (source / f"{split}.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
        (copy / f"{split}.jsonl").write_text("".join(lines[:120] if split == "train" else lines), encoding="utf-8")
    return str(copy)


def linked_vision_model(folder: Path, parameters: dict | None = None) -> str:
    """The tiny random vision model (`lib.vision.TINY_RANDOM`, which "auto" picks without a GPU)
    reached through a symlink: a vision checkpoint as a local folder."""
    from lib.vision import TINY_RANDOM, resolve_vision_model

    link = folder / "linked-vision-model"
    link.symlink_to(resolve_vision_model(TINY_RANDOM))
    return str(link)


def one(values):
    """The value every item of `values` shares (AssertionError if they differ or there are none)."""
    values = list(values)
    assert values and all(v == values[0] for v in values), values
    return values[0]


def short_runs(shown: Shown, folder: str) -> list[str]:
    """The short runs (lib.adapter_runs) under `folder` of the run folder, as paths relative to it."""
    return sorted(f"{folder}/{p.name}" for p in (shown.run_dir / folder).iterdir() if (p / "result.json").exists())


def each_run(shown: Shown, folder: str, read) -> list:
    """`read(shown, run)` for every short run under `folder`."""
    return [read(shown, run) for run in short_runs(shown, folder)]


def dataset_trained(shown: Shown, run: str) -> str:
    """Which of the given and the default `dataset_dir` the short run `run` trained on: the one whose
    training split, prepared as the run prepares it, has as many examples as the run recorded."""
    from lib.data import prepare_dataset, split_files
    from lib.model import load_tokenizer, resolve_model

    spec = shown.json(f"{run}/run-spec.json")
    tokenizer = load_tokenizer(resolve_model("gemma-3-270m"))
    sizes = {folder: len(prepare_dataset(split_files(ROOT / folder), tokenizer, spec["config"]["max_seq_length"])
                         .records["train"]) for folder in {shown.given["dataset_dir"], shown.defaults["dataset_dir"]}}
    matching = [folder for folder, size in sizes.items() if size == spec["data"]["examples"]]
    assert len(matching) == 1, f"{run}: {spec['data']['examples']} examples; the folders prepare {sizes}"
    return matching[0]


def vision_preset_of(spec: dict) -> str:
    """The lib.vision preset whose sequence length and DoRA switch a run-spec.json shows."""
    from lib.vision import PRESETS

    return one(name for name, chosen in PRESETS.items()
               if chosen.spec.optimisation.max_seq_length == spec["config"]["max_seq_length"]
               and chosen.spec.adapter.use_dora == spec["adapter"]["use_dora"])


OWN_RUN = "inside-gemma3-run"  # chapter 09's own short run


def inside(shown: Shown) -> dict:
    return shown.json("metrics/inside-gemma3.json")


BEYOND = "beyond-lora"  # chapter 10's short runs


def beyond(shown: Shown) -> list[dict]:
    """Each short run's result.json (lib.adapter_runs) under chapter 10's beyond-lora/."""
    return each_run(shown, BEYOND, lambda s, r: s.json(f"{r}/result.json"))


def nf4_runs(shown: Shown) -> list[dict]:
    return [r for r in beyond(shown) if r["run"]["precision"] != "fp32"]


def adapter_rank(result: dict) -> int:
    """The rank of a short run's adapter, as peft counts its trainable parameters: r x (in + out)
    summed over the adapted matrices, so proportional to r (lib.lora.adapter_parameters)."""
    from lib.gemma3 import GEMMA3_SHAPES
    from lib.lora import adapter_parameters

    shape = GEMMA3_SHAPES["270M"]
    per_rank = adapter_parameters(shape.linear_shapes(), shape.num_hidden_layers, 1)
    assert result["trainable_parameters"] % per_rank == 0, result["trainable_parameters"]
    return result["trainable_parameters"] // per_rank


def restart_warmup(result: dict) -> int:
    """The re-warm-up after a merge (lib.relora.ReLoRASchedule.restart_warmup) that reproduces the
    learning rates a ReLoRA run recorded at every step."""
    from lib.relora import ReLoRASchedule, jagged_cosine

    run = result["run"]
    fits = [warmup for warmup in range(run["relora_every"]) if all(
        math.isclose(rate, run["learning_rate"] * jagged_cosine(step - 1, run["max_steps"], ReLoRASchedule(
            run["relora_every"], run["relora_prune"], warmup), run["warmup_steps"]), rel_tol=1e-6, abs_tol=1e-12)
        for step, rate in result["learning_rates"])]
    assert len(fits) == 1, f"{run['name']}: re-warm-ups {fits} fit {result['learning_rates']}"
    return fits[0]


def blends(shown: Shown) -> dict:
    return shown.json("metrics/blends.json")


def ghost_rows(shown: Shown) -> list[dict]:
    """Every generation of chapter 08's text models, as metrics/ghost-architect.json keeps them."""
    return [row for rows in shown.json("metrics/ghost-architect.json")["examples"].values() for row in rows]


# Changes the later chapters' smoke runs must not see (they read chapter 04's adapter), that the
# smoke run needs as they are, or that need a file made for the test (a callable of a scratch
# folder and the parameters): made in one more run of the chapter, in a copy of its smoke run
# folder (so `resume` has a checkpoint to act on).
EXTRA_RUNS = {
    "04_trinity_training": {"rank": 16, "alpha": 8, "use_rslora": False, "use_dora": False, "seed": 7,
                            "learning_rate": 1e-4, "gradient_accumulation_steps": 2, "backend": "peft",
                            "compute_dtype": "float32", "resume": False, "model_name": linked_model},
    "05_oom_ladder": {"model_name": linked_model, "gpu_transcript": dated_transcript},
    # chapter 10 blends the OCR adapter with chapter 04's: "linear" needs both of one rank
    "08_ghost_architect": {"rank": 16, "alpha": 8, "use_rslora": False, "use_dora": False},
    # the smoke run needs 2 to compare data-parallel with one process; 3 processes of the 270M beside
    # the FSDP check took 8.4 GiB at 2, beside the other test worker: one process instead
    "11_scale_out": {"processes": 1},
}

# What an extra run reuses from the smoke run's folder besides the data and chapter 04's run: chapter
# 08's screenshots and their OCR, which the same dataset settings load instead of rebuilding.
EXTRA_RUN_REUSES = {"08_ghost_architect": ("ghost-data",)}

PROBES = {
    "01_concepts": {  # section 3's short runs (lib.adapter_runs), every one of them, and the printed tables
        "model_name": lambda s: one(each_run(s, "concepts", lambda s, r: s.json(f"{r}/run-spec.json")["base_model"])),
        "dataset_dir": lambda s: one(each_run(s, "concepts", dataset_trained)),
        "run_name": run_folder,
        "output_dir": lambda s: output_folder(s, ROOT),
        "sweep_ranks": lambda s: sorted({r for r, dora in each_run(s, "concepts", lambda s, r: (
            s.json(f"{r}/adapter/adapter_config.json")["r"], s.json(f"{r}/adapter/adapter_config.json")["use_dora"]))
            if not dora}),
        "sweep_steps": lambda s: one(each_run(s, "concepts", lambda s, r: s.trainer_state(r)["global_step"])),
        "batch_size": lambda s: one(each_run(s, "concepts", lambda s, r: s.trainer_state(r)["train_batch_size"])),
        "max_seq_length": lambda s: one(each_run(s, "concepts", lambda s, r: s.json(f"{r}/run-spec.json")["config"]
                                                 ["max_seq_length"])),
        "learning_rate": lambda s: one(each_run(s, "concepts", lambda s, r: max(
            row["learning_rate"] for row in s.trainer_state(r)["log_history"] if "learning_rate" in row))),
        "alpha": lambda s: one(each_run(s, "concepts", lambda s, r: s.json(f"{r}/adapter/adapter_config.json")
                                        ["lora_alpha"])),
        "dora_rank": lambda s: one(config["r"] for config in each_run(s, "concepts", lambda s, r: s.json(
            f"{r}/adapter/adapter_config.json")) if config["use_dora"]),
        # the Delta M / Delta D tracker records at every step divisible by track_every
        "track_every": lambda s: one(each_run(s, "concepts", lambda s, r: min(row["step"] for row in s.json(
            f"{r}/result.json")["magnitude_direction"]))),
        "table_ranks": lambda s: [int(r) for r in s.find(r"(?m)^rank((?:\s+\d+)+)\s*$").split()],
        "seed": lambda s: one(each_run(s, "concepts", lambda s, r: s.training_args(r).seed)),
        "compute_dtype": lambda s: one(each_run(s, "concepts", lambda s, r: s.json(f"{r}/result.json")["compute_dtype"])),
    },
    "04_trinity_training": {
        "model_name": lambda s: s.json("run-spec.json")["base_model"],
        "run_name": run_folder,
        "output_dir": lambda s: output_folder(s, ROOT),
        "max_steps": lambda s: s.trainer_state()["global_step"],
        "max_seq_length": lambda s: s.json("run-spec.json")["config"]["max_seq_length"],
        **adapter_shape("adapter"),
        "backend": backend_shown,
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
    "07_export": {  # metrics/export.json: the base merged into, every model's results and generations
        "model_name": lambda s: s.json("metrics/export.json")["base_model"],
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
    "08_ghost_architect": {  # the dataset folder, the OCR-trained text model's run, the vision run
        "model_name": lambda s: s.json("ghost-ocr/run-spec.json")["base_model"],
        "run_name": run_folder,
        "output_dir": lambda s: output_folder(s, ROOT),
        "dataset_examples": lambda s: len((s.run_dir / "ghost-data" / "examples.jsonl").read_text().splitlines()),
        # schema seeds count up from dataset_seed * 100_003 (lib.ghost_dataset.build_dataset)
        "dataset_seed": lambda s: min(json.loads(line)["schema_seed"] for line in
                                      (s.run_dir / "ghost-data" / "examples.jsonl").read_text().splitlines()) // 100_003,
        "screens_per_schema": lambda s: one(Counter(json.loads(line)["schema_seed"] for line in (
            s.run_dir / "ghost-data" / "examples.jsonl").read_text().splitlines()).values()),
        "ocr_workers": lambda s: s.json("ghost-data/build.json")["ocr_processes"],
        "max_steps": lambda s: s.trainer_state("ghost-ocr")["global_step"],
        "batch_size": lambda s: s.trainer_state("ghost-ocr")["train_batch_size"],
        "learning_rate": lambda s: s.training_args("ghost-ocr").learning_rate,  # 2 steps end inside the warm-up
        "max_seq_length": lambda s: s.json("ghost-ocr/run-spec.json")["config"]["max_seq_length"],
        **adapter_shape("ghost-ocr/adapter"),
        "backend": backend_shown,
        "compute_dtype": lambda s: one(t["compute_dtype"] for t in s.json("metrics/ghost-architect.json")
                                       ["training"].values()),
        "seed": lambda s: s.training_args("ghost-ocr").seed,
        "eval_n": lambda s: one(r["examples"] for r in s.json("metrics/ghost-architect.json")["scores"].values()),
        "max_new_tokens": lambda s: max(r["new_tokens"] for r in ghost_rows(s)),
        "eval_batch_size": lambda s: max(largest_batch(rows) for rows in s.json("metrics/ghost-architect.json")
                                         ["examples"].values()),
        "vision_model": lambda s: s.json("ghost-vision/run-spec.json")["base_model"],
        "vision_preset": lambda s: vision_preset_of(s.json("ghost-vision/run-spec.json")),
        "vision_max_steps": lambda s: s.trainer_state("ghost-vision")["global_step"],
        "vision_eval_n": lambda s: s.find(r"(\d+) test screenshots read by the vision model", int),
    },
    "09_inside_gemma3": {  # metrics/inside-gemma3.json (the chapter's measurements) and its own short run
        "model_name": lambda s: s.json(f"{OWN_RUN}/run-spec.json")["base_model"],
        "run_name": run_folder,
        "output_dir": lambda s: output_folder(s, ROOT),
        "compute_dtype": lambda s: one([inside(s)["compute_dtype"],
                                        s.json(f"{OWN_RUN}/metrics/training-stats.json")["compute_dtype"]]),
        "context_lengths": lambda s: [r["tokens"] for r in inside(s)["kv_cache"]],
        "span_blocks": lambda s: one(r["sequences"] for r in inside(s)["spans"] if r["evaluated_on"] != "test split"),
        "span_test_limit": lambda s: one(r["sequences"] for r in inside(s)["spans"] if r["evaluated_on"] == "test split"),
        # the window the test-split rows shorten the layers to, other than the model's own
        "short_window": lambda s: one(int(m.group(1)) for r in inside(s)["spans"] if r["evaluated_on"] == "test split"
                                      for m in [re.search(r"all local -> window (\d+)", r["change"])] if m),
        "drift_records": lambda s: one(r["records"] for r in inside(s)["drift"]),
        "own_train_records": lambda s: s.json(f"{OWN_RUN}/run-spec.json")["data"]["examples"],
        "own_max_steps": lambda s: s.trainer_state(OWN_RUN)["global_step"],
        "own_batch_size": lambda s: s.trainer_state(OWN_RUN)["train_batch_size"],
        "held_out_every": lambda s: sorted(r["step"] for r in inside(s)["held_out"])[1],  # measured at 0, k, 2k, ...
        "held_out_records": lambda s: one(n for m in inside(s)["membership"].values() for n in (m["members"], m["non_members"])),
        "max_seq_length": lambda s: s.json(f"{OWN_RUN}/run-spec.json")["config"]["max_seq_length"],
        "rank": lambda s: s.json(f"{OWN_RUN}/adapter/adapter_config.json")["r"],
        "alpha": lambda s: s.json(f"{OWN_RUN}/adapter/adapter_config.json")["lora_alpha"],
        "capacity_hidden_sizes": lambda s: sorted({int(r["label"].rsplit(" ", 1)[1]) for r in inside(s)["capacity"]}),
        # each dataset's size in multiples of 3.6 bits per parameter (sequences x 32 tokens x 8 bits)
        "capacity_dataset_multiples": lambda s: sorted({round(r["sequences"] * 32 * 8 / (3.6 * r["parameters"]), 1)
                                                         for r in inside(s)["capacity"]}),
        # the last step each run measured what it memorized at (its last step)
        "capacity_steps": lambda s: one(r["curve"][-1][0] for r in inside(s)["capacity"] + inside(s)["capacity_lora"]),
        "capacity_lora_ranks": lambda s: [int(r["label"].split("r=")[1]) for r in inside(s)["capacity_lora"]],
        "real_lora_ranks": lambda s: [int(r["label"].split("r=")[1]) for r in inside(s)["real_lora"]],
        "real_lora_sequences": lambda s: one(r["sequences"] for r in inside(s)["real_lora"]),
        "real_lora_steps": lambda s: one(r["curve"][-1][0] for r in inside(s)["real_lora"]),
        "seed": lambda s: s.training_args(OWN_RUN).seed,
    },
    "10_beyond_lora": {  # the short runs (lib.adapter_runs) under beyond-lora/ and metrics/blends.json
        "model_name": lambda s: one(each_run(s, BEYOND, lambda s, r: s.json(f"{r}/run-spec.json")["base_model"])),
        "run_name": run_folder,
        "output_dir": lambda s: output_folder(s, ROOT),
        "compute_dtype": lambda s: one(r["compute_dtype"] for r in beyond(s) if r["run"]["precision"] != "fp32"),
        "steps": lambda s: one(each_run(s, BEYOND, lambda s, r: s.trainer_state(r)["global_step"])),
        "batch_size": lambda s: one(each_run(s, BEYOND, lambda s, r: s.trainer_state(r)["train_batch_size"])),
        "max_seq_length": lambda s: one(each_run(s, BEYOND, lambda s, r: s.json(f"{r}/run-spec.json")["config"]
                                                 ["max_seq_length"])),
        # the runs that merge set every step's learning rate (lib.relora.jagged_cosine), up to the peak
        "learning_rate": lambda s: one(max(lr for _, lr in r["learning_rates"]) for r in beyond(s) if "merges" in r),
        "lora_rank": lambda s: one({adapter_rank(r) for r in nf4_runs(s)} - {adapter_rank(r) for r in nf4_runs(s)
                                                                             if "merges" in r}),
        "relora_rank": lambda s: one(adapter_rank(r) for r in nf4_runs(s) if "merges" in r),
        "relora_every": lambda s: one(r["merges"][0]["step"] for r in nf4_runs(s) if "merges" in r),
        # the share of the optimizer's two moments (2 entries per trainable parameter) zeroed at a merge
        "relora_prune": lambda s: one(round(m["optimizer_entries_zeroed"] / (2 * r["trainable_parameters"]), 2)
                                      for r in nf4_runs(s) if "merges" in r for m in r["merges"]),
        "relora_warmup": lambda s: one(restart_warmup(r) for r in nf4_runs(s) if "merges" in r),
        "rank1_merge_every": lambda s: sorted(r["merges"][0]["step"] for r in beyond(s)
                                              if r["run"]["precision"] == "fp32" and adapter_rank(r) == 1 and "merges" in r),
        "eval_records": lambda s: one(r["test_loss"]["records"] for r in beyond(s)),
        "blend_weights": lambda s: sorted({b["w"] for b in blends(s)["blends"] if b["method"].startswith("effective")}),
        "blend_methods": lambda s: [*dict.fromkeys(b["method"] for b in blends(s)["blends"] if b["method"] not in
                                                   ("code adapter", "SQL adapter") and not b["method"].startswith("effective")),
                                    *blends(s)["refused"]],
        "blend_eval_records": lambda s: one([s.find(r"scored on (\d+) code and", int),
                                             s.find(r"code and (\d+) SQL test records", int)]),
        # the run folder (under <run_name>/) whose adapter was loaded as the SQL adapter
        "ghost_adapter": lambda s: Path(blends(s)["adapters"]["sql"]).relative_to(s.run_dir).parts[0],
        "seed": lambda s: one(each_run(s, BEYOND, lambda s, r: s.training_args(r).seed)),
    },
    "11_scale_out": {  # the data-parallel run's folder (lib.adapter_runs) and the FSDP check's rows
        "model_name": lambda s: s.json(f"{DATA_PARALLEL}/run-spec.json")["base_model"],
        "processes": lambda s: s.json(f"{DATA_PARALLEL}/result.json")["processes"],  # its world size
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
MADE_SMOKE_VALUES = {"01_concepts": {"model_name": linked_model, "dataset_dir": smaller_dataset},
                     "06_evaluate": {"model_name": linked_model},
                     "07_export": {"adapter_dir": linked_adapter, "model_name": linked_model},
                     "08_ghost_architect": {"model_name": linked_model, "vision_model": linked_vision_model},
                     "09_inside_gemma3": {"model_name": linked_model},
                     "10_beyond_lora": {"model_name": linked_model},
                     "11_scale_out": {"model_name": linked_model}}

# Parameters no run here can change, with the reason (checked to be parameters of the chapter).
NOT_CHANGED: dict[str, dict[str, str]] = {}
