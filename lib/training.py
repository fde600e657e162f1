"""Supervised fine-tuning with the Trinity: loading, response-only loss, monitoring, resuming.

One call, `train(...)`, runs a transformers Trainer on pre-tokenized conversations whose labels
carry loss only on assistant tokens (see `lib.data.tokenize_conversation`). trl's SFTTrainer
would do the same, but trl 1.15 computes its loss with a Triton kernel that does not exist on a
CPU; the plain Trainer with a padding collator runs everywhere. Everything a run produces
lands under its run folder:

    <run>/adapter/                      the final LoRA/DoRA adapter (peft format)
    <run>/checkpoints/checkpoint-N/     every `save_steps`; a rerun resumes from the last one
    <run>/training-status.json          rewritten atomically at every logging step
    <run>/logs/training.log             one line per logging step
    <run>/logs/samples.jsonl            greedy generations every `sample_every` steps
    <run>/metrics/training-stats.json   tokens/s, peak memory, losses, wall time
    <run>/run-spec.json                 what the run trains: resuming with other settings is refused
"""

from __future__ import annotations

import hashlib
import json
import re
import resource
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import torch
from transformers import TrainerCallback

from .artifacts import read_json, read_jsonl, write_json
from .distributed import is_main_process, world_size
from .fast_dora import use_fast_dora
from .fsdp import full_trainable_state, is_sharded, quant_storage_for_launch
from .lora import trainable_parameters
from .loss import causal_lm_parts
from .model import ModelSource, keep_4bit_layout_on_cpu, load_causal_lm, load_tokenizer, resolve_model
from .precision import resolve_compute_dtype
from .run_spec import UNQUANTIZED, RunSpec, TrainingConfig


def run_paths(run_dir: str | Path) -> dict[str, Path]:
    """The files and folders of one run (see the module docstring)."""
    run_dir = Path(run_dir)
    return {
        "run": run_dir,
        "spec": run_dir / "run-spec.json",
        "adapter": run_dir / "adapter",
        "checkpoints": run_dir / "checkpoints",
        "status": run_dir / "training-status.json",
        "log": run_dir / "logs" / "training.log",
        "samples": run_dir / "logs" / "samples.jsonl",
        "stats": run_dir / "metrics" / "training-stats.json",
    }


CHECKPOINT_NAME = re.compile(r"checkpoint-(\d+)")


def checkpoint_state(folder: Path) -> dict | None:
    """A checkpoint's trainer_state.json if the checkpoint is complete, else None.

    transformers writes trainer_state.json last, in place: a kill during a save leaves it missing,
    empty or cut short. Complete means: it reads as JSON, its global_step is the folder's number,
    and the adapter weights and optimizer state it resumes from are there.
    """
    match = CHECKPOINT_NAME.fullmatch(folder.name)
    if match is None or not folder.is_dir():
        return None
    try:
        state = json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    # FSDP's sharded checkpoints (accelerate's save_fsdp_model / save_fsdp_optimizer) are folders.
    weights = any((folder / name).exists() for name in ("adapter_model.safetensors", "model.safetensors",
                                                         "pytorch_model_fsdp_0"))
    optimizer = any((folder / name).exists() for name in ("optimizer.pt", "optimizer_0"))
    if state.get("global_step") != int(match.group(1)) or not weights or not optimizer:
        return None
    return state


def last_checkpoint(run_dir: str | Path) -> Path | None:
    """The highest-numbered complete checkpoint folder of a run (`checkpoint_state`), or None.

    A torn newest checkpoint falls back to the one before; folders that are not named
    `checkpoint-<step>` (a copy, a backup) are ignored.
    """
    folder = run_paths(run_dir)["checkpoints"]
    steps = sorted(((int(m.group(1)), p) for p in folder.glob("checkpoint-*")
                    if (m := CHECKPOINT_NAME.fullmatch(p.name))), reverse=True)
    return next((path for _, path in steps if checkpoint_state(path) is not None), None)


# ------------------------------------------------------------------ memory

def current_memory_gib(device: str) -> float:
    """Memory in use now, GiB: reserved by torch on a CUDA GPU, else the process's RSS."""
    if device == "cuda":
        return torch.cuda.memory_reserved() / 2**30
    import psutil

    return psutil.Process().memory_info().rss / 2**30


def peak_memory_gib(device: str) -> tuple[float, str]:
    """(GiB, what it measures): max reserved on a CUDA GPU, else the process's peak RSS."""
    if device == "cuda":
        return torch.cuda.max_memory_reserved() / 2**30, "torch.cuda.max_memory_reserved"
    # ru_maxrss is in KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "peak RSS (ru_maxrss)"


# ------------------------------------------------------------------ loading

def compute_dtype_of(spec: RunSpec, device: str | None = None) -> torch.dtype:
    """The dtype `spec` computes in on `device` (default: this machine's; `lib.precision` resolves
    "auto"). Raises ValueError for a precision the loader cannot load ("int8") and for an
    unquantized base whose dtype is not the compute dtype (an unquantized base computes in its own)."""
    loading = spec.loading
    compute_dtype = resolve_compute_dtype(loading.compute_dtype, device)
    if not loading.load_in_4bit:
        held = UNQUANTIZED.get(loading.precision)
        if held is None:
            raise ValueError(f"precision={loading.precision!r}: the loader takes 'nf4-dq', 'nf4' or an unquantized "
                             f"base ({', '.join(UNQUANTIZED)}); int8 is for memory estimates")
        if getattr(torch, held) != compute_dtype:
            raise ValueError(f"precision={loading.precision!r} holds the base in {held}, but the compute dtype is "
                             f"{str(compute_dtype).removeprefix('torch.')}: set compute_dtype={held!r} or another "
                             f"precision")
    return compute_dtype


def load_for_training(spec: RunSpec):
    """(peft model, tokenizer): `spec.model` (`lib.model.resolve_model`: an embedded alias, a folder
    or a hub id) loaded as `spec.loading` says (an NF4 base, or unquantized in the compute dtype)
    with `spec.adapter`, ready to train at `spec.optimisation.max_seq_length`.

    backend "unsloth" uses FastModel (on a GPU, or its CPU fallback; import it first, see
    `lib.environment.import_backend`); "peft" uses transformers + bitsandbytes + peft with
    `prepare_model_for_kbit_training`. DoRA layers get `lib.fast_dora` unless
    spec.loading.dora_implementation is "peft". Raises ValueError as `compute_dtype_of` does.
    """
    model, tokenizer = _load_peft_model(resolve_model(spec.model), spec, compute_dtype_of(spec))
    if spec.adapter.use_dora and spec.loading.dora_implementation == "fast":
        use_fast_dora(model)
    return model, tokenizer


def _load_peft_model(source: ModelSource, spec: RunSpec, compute_dtype: torch.dtype):
    trinity, mode, load_in_4bit = spec.adapter, spec.loading.checkpointing, spec.loading.load_in_4bit
    max_seq_length = spec.optimisation.max_seq_length
    if spec.loading.backend == "unsloth":
        if spec.loading.precision == "nf4":
            raise ValueError("precision='nf4': unsloth's loader always double-quantizes NF4; use 'nf4-dq' or "
                             "backend 'peft'")
        from unsloth import FastModel

        # dtype: the course's compute dtype (lib.precision), not unsloth's own choice, which reads the
        # CPU's flags only and so cannot see an emulated CPU or a forced dtype.
        model, tokenizer = FastModel.from_pretrained(source.path_or_id, max_seq_length=max_seq_length,
                                                     load_in_4bit=load_in_4bit, dtype=compute_dtype,
                                                     full_finetuning=False)
        if load_in_4bit and not torch.cuda.is_available():  # the CPU fallback meets bitsandbytes' repacking
            keep_4bit_layout_on_cpu(model)
        model = FastModel.get_peft_model(
            model, r=trinity.rank, lora_alpha=trinity.alpha, use_rslora=trinity.use_rslora,
            use_dora=trinity.use_dora, target_modules=list(trinity.target_modules), lora_dropout=trinity.dropout,
            bias="none", use_gradient_checkpointing={"off": False, "standard": True, "offloaded": "unsloth"}[mode])
        tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
        if not tokenizer.chat_template:
            tokenizer.chat_template = load_tokenizer(source).chat_template
        return model, tokenizer
    from peft import get_peft_model, prepare_model_for_kbit_training

    model = load_causal_lm(source, compute_dtype, load_in_4bit=load_in_4bit,
                           double_quant=spec.loading.precision == "nf4-dq",
                           quant_storage=quant_storage_for_launch(compute_dtype))
    if load_in_4bit:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=mode != "off",
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    elif mode != "off":
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    return get_peft_model(model, trinity.to_peft()), load_tokenizer(source)


# ------------------------------------------------------------------ monitoring

def utc_now() -> str:
    """The time now in UTC, ISO 8601 to the second ("2026-12-08T04:10:00+00:00")."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class StatusCallback(TrainerCallback):
    """Writes training-status.json (atomically) and a log line at every logging step; in a
    data-parallel run only the main process writes (`lib.distributed`)."""

    def __init__(self, run_dir: Path, device: str):
        self.paths = run_paths(run_dir)
        self.device = device
        self.status = {"running": True, "step": 0, "total_steps": 0, "epoch": 0.0, "total_epochs": 0.0,
                       "loss": None, "learning_rate": None, "eta_seconds": None, "started_at": utc_now(),
                       "checkpoint_at": None, "error": None}
        self._t0 = time.monotonic()
        self._first_step = None

    def write(self, **changes) -> None:
        self.status.update(changes)
        if is_main_process():
            write_json(self.paths["status"], self.status)

    def on_train_begin(self, args, state, control, **kwargs):
        self._first_step = state.global_step
        self._t0 = time.monotonic()
        self.write(step=state.global_step, total_steps=state.max_steps,
                   total_epochs=round(float(state.num_train_epochs), 4))

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "loss" not in logs:
            return
        done = state.global_step - self._first_step
        elapsed = time.monotonic() - self._t0
        eta = elapsed / done * (state.max_steps - state.global_step) if done else None
        self.write(step=state.global_step, epoch=round(state.epoch or 0.0, 4), loss=logs["loss"],
                   learning_rate=logs.get("learning_rate"), eta_seconds=None if eta is None else round(eta, 1))
        if not is_main_process():
            return
        self.paths["log"].parent.mkdir(parents=True, exist_ok=True)
        with open(self.paths["log"], "a", encoding="utf-8") as log:
            log.write(json.dumps({"time": utc_now(), "step": state.global_step, **logs,
                                  "memory_gib": round(current_memory_gib(self.device), 3)}) + "\n")

    def on_save(self, args, state, control, **kwargs):
        self.write(checkpoint_at=state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        self.write(running=False, step=state.global_step, eta_seconds=0)


def in_notebook() -> bool:
    """True inside a Jupyter kernel (a notebook, papermill), False in a plain Python process."""
    if "IPython" not in sys.modules:  # a kernel has imported it; importing it here costs a short run 0.2 s
        return False
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and hasattr(shell, "kernel")


class NotebookProgressCallback(TrainerCallback):
    """Live progress in a notebook: one output line (step, loss, elapsed, time left) updated in place
    at every logging step. An update replaces the displayed output (a display id), so papermill
    stores the final line only, not one per step."""

    def __init__(self, status: StatusCallback):
        self.status, self.handle = status, None

    def _html(self) -> str:
        s = self.status.status
        elapsed = time.monotonic() - self.status._t0
        loss = "" if s["loss"] is None else f" · loss {s['loss']:.4f}"
        left = "" if not s["eta_seconds"] else f" · {s['eta_seconds'] / 60:.1f} min left"
        state = "done" if not s["running"] else "training"
        return (f"<progress value='{s['step']}' max='{s['total_steps']}' style='width:14em'></progress> "
                f"<code>{state}: step {s['step']}/{s['total_steps']}{loss} · {elapsed:.0f} s{left}</code>")

    def _show(self) -> None:
        from IPython.display import HTML, display

        if self.handle is None:
            self.handle = display(HTML(self._html()), display_id=True)
        else:
            self.handle.update(HTML(self._html()))

    def on_train_begin(self, args, state, control, **kwargs):
        self._show()

    def on_log(self, args, state, control, logs=None, **kwargs):
        self._show()

    def on_train_end(self, args, state, control, **kwargs):
        self._show()


class SampleCallback(TrainerCallback):
    """Greedy generations for a few fixed prompts every `every` steps, appended to samples.jsonl."""

    def __init__(self, run_dir: Path, tokenizer, prompts: list[list[dict]], every: int, max_new_tokens: int):
        self.path = run_paths(run_dir)["samples"]
        self.tokenizer, self.prompts, self.every, self.max_new_tokens = tokenizer, prompts, every, max_new_tokens

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.every <= 0 or not self.prompts or state.global_step % self.every or not is_main_process():
            return
        from .evaluation import generate_with_details

        was_training = model.training
        model.eval()
        outputs = generate_with_details(model, self.tokenizer, self.prompts, self.max_new_tokens,
                                        batch_size=len(self.prompts))
        model.train(was_training)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            for i, output in enumerate(outputs):
                handle.write(json.dumps({"step": state.global_step, "prompt": i, "text": output.text,
                                         "new_tokens": output.new_tokens}) + "\n")


class GradientNormCallback(TrainerCallback):
    """Per-layer gradient norms of the trainable parameters at every `every`-th optimizer step,
    appended to <run>/gradient-norms.jsonl: one line per step, {"step", "norms": {layer: L2 norm}}.

    Read just before the optimizer step, so after gradient clipping (a uniform rescale: the shape
    across layers is unchanged; the pre-clip total is the log's grad_norm). Parameters outside the
    decoder layers count under -1. Off unless a chapter passes it to `train(extra_callbacks=...)`.
    """

    def __init__(self, run_dir: Path, every: int = 1):
        self.path = Path(run_dir) / "gradient-norms.jsonl"
        self.every = every

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        step = state.global_step + 1  # the step this update completes
        if model is None or step % self.every or not is_main_process():
            return
        from .lora import layer_index

        squares: dict[int, float] = {}
        for name, parameter in model.named_parameters():
            if parameter.grad is not None:
                layer = layer_index(name) if "layers." in name else -1
                squares[layer] = squares.get(layer, 0.0) + float(parameter.grad.detach().float().pow(2).sum())
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"step": step, "norms": {k: v ** 0.5 for k, v in sorted(squares.items())}}) + "\n")


def read_gradient_norms(run_dir: str | Path) -> list[dict]:
    """The records GradientNormCallback wrote ({"step", "norms": {layer (int): norm}}), in order; a
    torn last line (a killed run) is left out, a bad line elsewhere raises ValueError (file:line)."""
    rows = read_jsonl(Path(run_dir) / "gradient-norms.jsonl", torn_tail_ok=True)
    return [{"step": row["step"], "norms": {int(k): v for k, v in row["norms"].items()}} for row in rows]


# ------------------------------------------------------------------ training

def tokenized_dataset(tokenizer, records, max_seq_length: int):
    """A datasets.Dataset of input_ids and labels (-100 outside assistant turns)."""
    from datasets import Dataset

    from .data import response_labels, tokenize_conversation

    rows = []
    for record in records:
        tokens = tokenize_conversation(tokenizer, record.messages)
        if len(tokens["input_ids"]) > max_seq_length:
            raise ValueError(f"{record.file}:{record.line}: {len(tokens['input_ids'])} tokens > max_seq_length "
                             f"{max_seq_length}; run lib.data.prepare_dataset first")
        rows.append({"input_ids": tokens["input_ids"], "labels": response_labels(tokens)})
    return Dataset.from_list(rows)


def training_arguments(config: TrainingConfig, run_dir: Path, device: str, compute_dtype: torch.dtype):
    """transformers TrainingArguments: checkpoints under <run>/checkpoints, no hub, no reporting."""
    from transformers import TrainingArguments

    gpu = device == "cuda"
    return TrainingArguments(
        output_dir=str(run_paths(run_dir)["checkpoints"]), max_steps=config.max_steps,
        per_device_train_batch_size=config.batch_size, gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate, warmup_steps=config.warmup_steps,
        lr_scheduler_type=config.lr_scheduler_type, weight_decay=config.weight_decay,
        optim=config.optimizer_for(device),
        logging_steps=config.logging_steps, save_steps=config.save_steps or config.max_steps, save_total_limit=3,
        seed=config.seed, data_seed=config.seed,
        # lib.precision.gpu_precision: bf16 autocast where the GPU has bfloat16; never float16
        # autocast (it overflows Gemma 3; unsloth switches it off for Gemma 3 itself).
        bf16=gpu and compute_dtype == torch.bfloat16, fp16=False,
        gradient_checkpointing=False,  # already set up by the loader (peft or unsloth)
        report_to=[], disable_tqdm=True, include_num_input_tokens_seen="non_padding",
        use_cpu=not gpu, dataloader_num_workers=0, remove_unused_columns=False)


def course_trainer_class():
    """transformers' Trainer with the chunked response-only loss (`lib.loss`) on a CPU and fast
    DoRA's magnitudes in torch's fused AdamW where the optimizer is bitsandbytes' (`lib.fast_dora`)."""
    from transformers import Trainer

    from .fast_dora import magnitudes_in_fused_adamw
    from .loss import response_only_loss

    class CourseTrainer(Trainer):
        loss_chunk_tokens = 0

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = None
            if self.loss_chunk_tokens and not return_outputs and "labels" in inputs and model.training:
                loss = response_only_loss(model, inputs, self.loss_chunk_tokens, num_items_in_batch)
            if loss is None:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes  # as Trainer.compute_loss: ranks sum gradients
            return loss

        def create_optimizer(self, model=None):
            # fast DoRA's magnitude vectors in torch's fused AdamW beside bitsandbytes' 8-bit AdamW
            # for A and B: one launch for all of them instead of one per layer (lib.fast_dora)
            optimizer = super().create_optimizer(model)
            self.optimizer = magnitudes_in_fused_adamw(optimizer, self.model if model is None else model)
            return self.optimizer

        def _load_optimizer_and_scheduler(self, checkpoint):
            # transformers 5.17 loads the optimizer state with map_location=args.device when several
            # processes train; on a CPU that device is "cpu:0", which torch.load cannot map to, so a
            # data-parallel CPU run could not resume. Map CPU devices to "cpu" for this call only.
            if self.args.world_size == 1 or self.args.device.type != "cpu":
                return super()._load_optimizer_and_scheduler(checkpoint)
            original = torch.load

            def load(*args, map_location=None, **kwargs):
                if isinstance(map_location, torch.device) and map_location.type == "cpu":
                    map_location = "cpu"
                return original(*args, map_location=map_location, **kwargs)

            torch.load = load
            try:
                return super()._load_optimizer_and_scheduler(checkpoint)
            finally:
                torch.load = original

    return CourseTrainer


# Settings that may change when a run is continued: more steps, other logging and sampling.
RESUMABLE_CHANGES = ("max_steps", "logging_steps", "save_steps", "sample_every", "sample_max_new_tokens")


def resume_record(model, dataset, config: TrainingConfig) -> dict:
    """What a run trains, as <run>/run-spec.json keeps it for `check_resume`: the optimisation
    settings, the base model and adapter as loaded, and a digest of the training data (token ids
    and labels of every example, for a tokenized dataset)."""
    peft_config = getattr(model, "peft_config", {}).get("default")
    adapter = {} if peft_config is None else {
        key: getattr(peft_config, key) for key in ("r", "lora_alpha", "use_rslora", "use_dora", "lora_dropout")}
    if peft_config is not None:
        adapter["target_modules"] = sorted(peft_config.target_modules) if not isinstance(
            peft_config.target_modules, str) else peft_config.target_modules
    base = getattr(getattr(model, "config", None), "_name_or_path", None)
    if hasattr(dataset, "column_names") and {"input_ids", "labels"} <= set(dataset.column_names):
        digest = hashlib.sha256()
        for row in dataset:
            digest.update(json.dumps([row["input_ids"], row["labels"]]).encode())
        data = {"examples": len(dataset), "sha256": digest.hexdigest()}
    else:
        data = {"examples": len(dataset)}
    return {"config": {k: v for k, v in asdict(config).items() if k not in RESUMABLE_CHANGES},
            "base_model": base, "adapter": adapter, "data": data}


def check_resume(run_dir: Path, record: dict) -> None:
    """Raise ValueError, naming every difference, when `run_dir`'s run-spec.json (the settings it was
    started with) is not `record` (`resume_record`): a resumed run must continue the same training."""
    path = run_paths(run_dir)["spec"]
    if not path.exists():
        return
    before = read_json(path)
    differences = []
    for part in record:
        old, new = before.get(part, {}), record[part]
        if isinstance(new, dict):
            differences += [f"{part}.{key}: {old.get(key)!r} then, {new.get(key)!r} now"
                            for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)]
        elif old != new:
            differences.append(f"{part}: {old!r} then, {new!r} now")
    if differences:
        raise ValueError(f"{run_dir} holds a run started with other settings; resuming would mix two trainings. "
                         f"Use another run folder, or resume=False to start over. Differences:\n  "
                         + "\n  ".join(differences))


@dataclass
class TrainingResult:
    run_dir: Path
    resumed_from: str | None
    stats: dict
    log_history: list[dict]


def save_adapter(model, tokenizer, folder: Path, state_dict: dict | None = None) -> Path:
    """Save the adapter (peft format) and tokenizer to `folder`, replacing it only when complete.
    `state_dict`: the adapter's whole tensors where the model holds shards (FSDP2:
    `lib.fsdp.full_trainable_state`, gathered on every process before rank 0 saves)."""
    import shutil

    from .artifacts import replace_folder

    staging = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging, state_dict=state_dict)
    tokenizer.save_pretrained(staging)
    return replace_folder(staging, folder)


def train(model, tokenizer, train_records, spec: RunSpec, run_dir: str | Path, device: str,
          sample_prompts: list[list[dict]] = (), resume: bool = True, extra_callbacks=()) -> TrainingResult:
    """Train `model` (a peft model from `load_for_training(spec)`) with `spec.optimisation`
    and save the adapter under `run_dir`.

    With `resume` and a checkpoint in <run>/checkpoints, training continues from the last complete
    one (`last_checkpoint`): optimizer, scheduler, RNG and data order restored, so the loss curve
    continues. A resume with other settings or data than the run was started with raises
    ValueError naming the differences (`check_resume`; max_steps and logging may change). A fresh
    start (`resume` False, or no checkpoint) deletes an earlier run's checkpoints, log and samples
    in `run_dir`. A KeyboardInterrupt or error is recorded in training-status.json and re-raised.
    """
    from transformers import DataCollatorForSeq2Seq

    # Pads input_ids with the pad token and labels with -100, so padding carries no loss.
    collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    dataset = tokenized_dataset(tokenizer, train_records, spec.optimisation.max_seq_length)
    return train_dataset(model, tokenizer, dataset, collator, spec, run_dir, device, sample_prompts, resume,
                         extra_callbacks)


def train_dataset(model, processing_class, dataset, collator, spec: RunSpec, run_dir: str | Path, device: str,
                  sample_prompts: list[list[dict]] = (), resume: bool = True, extra_callbacks=()) -> TrainingResult:
    """`train` for any map-style `dataset` and `collator` (a callable from a list of items to a batch
    dict with labels): the vision path's conversations with images. `processing_class` (tokenizer
    or processor) is saved next to the adapter."""
    from transformers import PrinterCallback

    tokenizer = processing_class
    config = replace(spec.optimisation, optim=spec.optimisation.optimizer_for(device))
    compute_dtype = compute_dtype_of(spec, device)
    run_dir = Path(run_dir)
    paths = run_paths(run_dir)
    if device == "cpu":
        # Denormal floats make CPU matmuls erratically slow in long runs; flush them to zero.
        torch.set_flush_denormal(True)
    status = StatusCallback(run_dir, device)
    callbacks = [status, *([NotebookProgressCallback(status)] if in_notebook() else []), *extra_callbacks]
    if sample_prompts:
        callbacks.append(SampleCallback(run_dir, tokenizer, list(sample_prompts), config.sample_every,
                                        config.sample_max_new_tokens))
    trainer = course_trainer_class()(model=model, args=training_arguments(config, run_dir, device, compute_dtype),
                                     train_dataset=dataset, data_collator=collator, processing_class=tokenizer,
                                     callbacks=callbacks)
    if device == "cpu" and config.loss_chunk_tokens and causal_lm_parts(model) is not None:
        trainer.loss_chunk_tokens = config.loss_chunk_tokens
        trainer.model_accepts_loss_kwargs = True  # the loss divides by num_items_in_batch: no second division
    trainer.remove_callback(PrinterCallback)  # the status file and log replace its printed dicts
    checkpoint = last_checkpoint(run_dir) if resume else None
    if checkpoint is None and is_main_process():  # a fresh start: an earlier run's log lines would mix with this one's
        for stale in (paths["log"], paths["samples"]):
            stale.unlink(missing_ok=True)
        # and its checkpoints would outlive this run's: a later resume would continue from the highest-numbered
        shutil.rmtree(paths["checkpoints"], ignore_errors=True)
    record = resume_record(model, dataset, config)
    if checkpoint is not None:
        check_resume(run_dir, record)
    if is_main_process():
        write_json(paths["spec"], record)
    if checkpoint is not None and paths["stats"].exists() and \
            checkpoint_state(checkpoint)["global_step"] >= config.max_steps:
        # The run is complete. Resuming would still train one step past max_steps (transformers
        # 5.17), so load the final checkpoint's adapter instead.
        return finished_run(model, tokenizer, checkpoint, run_dir, status)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.monotonic()
    try:
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    except BaseException as err:  # KeyboardInterrupt included: record it, then let it propagate
        status.write(running=False, step=trainer.state.global_step, error=f"{type(err).__name__}: {err}".strip(": "))
        raise
    wall = time.monotonic() - started
    # Under FSDP2 each process holds shards: every process gathers the adapter, rank 0 saves it.
    whole = full_trainable_state(trainer.model) if is_sharded(trainer.model) else None
    if is_main_process():
        save_adapter(trainer.model, tokenizer, paths["adapter"], whole)
    tokens = trainer.state.num_input_tokens_seen - (read_json(checkpoint / "trainer_state.json").get(
        "num_input_tokens_seen", 0) if checkpoint else 0)
    peak, peak_kind = peak_memory_gib(device)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    stats = {
        "steps": trainer.state.global_step, "resumed_from": checkpoint.name if checkpoint else None,
        "train_seconds_this_session": round(wall, 1), "tokens_this_session": int(tokens),
        "tokens_per_second": round(tokens / wall, 1) if wall else None,
        "peak_memory_gib": round(peak, 3), "peak_memory_measure": peak_kind,
        "first_loss": losses[0] if losses else None, "final_loss": losses[-1] if losses else None,
        "device": device, "compute_dtype": str(compute_dtype).replace("torch.", ""),
        "trainable_parameters": trainable_parameters(model), "config": asdict(config),
        "processes": world_size(), "finished_at": utc_now(),
    }
    if is_main_process():
        write_json(paths["stats"], stats)
    return TrainingResult(run_dir, stats["resumed_from"], stats, trainer.state.log_history)


def finished_run(model, tokenizer, checkpoint: Path, run_dir: Path, status: StatusCallback) -> TrainingResult:
    """A completed run met again: `model` gets the final checkpoint's adapter weights (peft's
    `set_peft_model_state_dict`), adapter/ is rewritten from them, the statistics of the session
    that trained are kept. Nothing is trained."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = checkpoint / "adapter_model.safetensors"
    if not weights.exists():  # an FSDP checkpoint holds shards; the run's adapter/ is its last step, whole
        weights = run_paths(run_dir)["adapter"] / "adapter_model.safetensors"
    set_peft_model_state_dict(model, load_file(weights))
    if is_main_process():
        save_adapter(model, tokenizer, run_paths(run_dir)["adapter"])
    state = read_json(checkpoint / "trainer_state.json")
    losses = [h for h in state["log_history"] if "loss" in h]
    status.write(running=False, step=state["global_step"], total_steps=state["max_steps"], eta_seconds=0,
                 checkpoint_at=state["global_step"], epoch=round(state["epoch"], 4),
                 total_epochs=round(float(state["num_train_epochs"]), 4),
                 loss=losses[-1]["loss"] if losses else None,
                 learning_rate=losses[-1].get("learning_rate") if losses else None)
    return TrainingResult(run_dir, checkpoint.name, read_json(run_paths(run_dir)["stats"]), state["log_history"])


def seconds_per_example(step_seconds: dict[int, float], lengths: list[int]) -> float:
    """Mean training seconds per example at batch 1, from measured step times {sequence length:
    seconds} and the examples' token lengths: each length's time is interpolated linearly between
    the measured lengths (clamped at the shortest and longest measured; a shorter step is not
    cheaper on a GPU that the small step leaves idle). Raises ValueError without measurements."""
    import numpy as np

    if not step_seconds or not lengths:
        raise ValueError("need measured step times and at least one example length")
    measured = sorted(step_seconds)
    return float(np.interp(lengths, measured, [step_seconds[n] for n in measured]).mean())


def read_log(run_dir: str | Path) -> list[dict]:
    """The training log, one entry per step, across resumed sessions.

    Steps logged after the last checkpoint of an interrupted session are trained again on resume;
    the resumed session's entry replaces the lost one. A cut-short last line (a kill while it was
    written) is left out; a bad line elsewhere raises ValueError naming file:line.
    """
    path = run_paths(run_dir)["log"]
    if not path.exists():
        return []
    # A torn last line is the one being written when the run was killed: a resume redoes that step.
    by_step = {entry["step"]: entry for entry in read_jsonl(path, torn_tail_ok=True, what="log entry")}
    return [by_step[step] for step in sorted(by_step)]
