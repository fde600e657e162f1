"""One training run, specified once: the model, the adapter, the optimisation and how the base is loaded.

A `RunSpec` has four parts, each a frozen dataclass whose defaults are decided here and nowhere else:

- `model`: an embedded alias ("gemma-3-270m"), a local folder or a hub id to train; for a memory
  estimate also a Gemma 3 size ("12B") or a `lib.gemma3.Gemma3Shape`.
- `adapter` (`lib.lora.TrinityConfig`): rank, alpha, rsLoRA, DoRA, target modules, dropout.
- `optimisation` (`TrainingConfig`): steps, batch, learning rate and schedule, sequence length,
  optimizer, seed, and how often to log, checkpoint and sample.
- `loading` (`LoadingConfig`): the backend, the precision of the frozen base, the compute dtype,
  gradient checkpointing and the DoRA implementation.

Everything that trains or predicts a run takes one: `lib.training.load_for_training` and `train`,
`lib.memory.estimate`, the OOM ladder's rungs (`lib.oom_ladder`), chapter 01's and 10's short runs
(`lib.adapter_runs.AdapterRun`) and the vision presets (`lib.vision.PRESETS`). A field is changed
by its name, whichever part holds it:

    spec = RunSpec.of("12B", rank=32, max_seq_length=2048)     # RunSpec() with those changes
    smaller = spec.replace(use_dora=False, batch_size=1)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace

from .lora import ALL_LINEAR_MODULES, TrinityConfig

BACKENDS = ("unsloth", "peft")
# Weights of the frozen base: NF4 (QLoRA's 4-bit NormalFloat), with double quantization of its
# block constants ("nf4-dq"); LLM.int8 (estimated only); or unquantized in a 16/32-bit dtype.
PRECISIONS = ("nf4-dq", "nf4", "int8", "bf16", "fp16", "fp32")
UNQUANTIZED = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
COMPUTE_DTYPES = ("auto", "bfloat16", "float16", "float32")
CHECKPOINTING = ("off", "standard", "offloaded")
DORA_IMPLEMENTATIONS = ("fast", "peft")
OPTIMIZERS = ("adamw_torch", "adamw_8bit", "paged_adamw_8bit")


def _check(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r}: use one of {allowed}")


@dataclass(frozen=True)
class TrainingConfig:
    """Optimisation settings of one run (transformers' TrainingArguments names where they exist).

    max_steps: optimizer steps. batch_size: sequences per forward pass; gradient_accumulation_steps
    passes per optimizer step (the batch is their product). learning_rate, warmup_steps (linear
    warm-up), lr_scheduler_type (transformers' names: "linear", "cosine", "constant",
    "constant_with_warmup"), weight_decay. max_seq_length: tokens per sequence, longer examples are
    refused (`lib.training.tokenized_dataset`). optim: "adamw_8bit" (bitsandbytes, the QLoRA
    recipe's), "paged_adamw_8bit", "adamw_torch", or None for the course's choice on the device
    (`optimizer_for`). logging_steps, save_steps (a checkpoint every N steps; 0: at the end only), sample_every
    (generate from sample prompts every N steps; 0 never) and sample_max_new_tokens. seed: torch,
    data order and dropout. loss_chunk_tokens: on a CPU, the response-only loss computes the
    logits of the labelled tokens only, this many rows at a time (`lib.loss`; 0: the model's own
    loss over the full logits); ignored on a GPU, where the backend computes the loss.
    """

    max_steps: int = 60
    batch_size: int = 4
    gradient_accumulation_steps: int = 1
    learning_rate: float = 2e-4
    warmup_steps: int = 5
    lr_scheduler_type: str = "linear"
    weight_decay: float = 0.0
    max_seq_length: int = 512
    logging_steps: int = 1
    save_steps: int = 20
    sample_every: int = 20
    sample_max_new_tokens: int = 64
    optim: str | None = None
    seed: int = 3407
    loss_chunk_tokens: int = 256

    def __post_init__(self):
        for name in ("max_steps", "batch_size", "gradient_accumulation_steps", "max_seq_length", "logging_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("save_steps", "sample_every", "warmup_steps", "loss_chunk_tokens"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.optim is not None:
            _check("optim", self.optim, OPTIMIZERS)

    def optimizer_for(self, device: str) -> str:
        """`optim`, or where it is None the course's choice for `device` ("cuda" or "cpu"):
        bitsandbytes' 8-bit AdamW on a GPU, the QLoRA recipe's (its two states take 2 bytes per
        trainable parameter instead of 8; chapter 01 measures this); torch's AdamW on a CPU, where
        the chapters' runs are small and bitsandbytes' optimizers are built for CUDA. Under an
        FSDP launch torch's AdamW on GPUs too: bitsandbytes' 8-bit update takes plain tensors, not
        FSDP2's sharded DTensors (it raises "got mixed torch.Tensor and DTensor")."""
        from .fsdp import launched_with_fsdp

        if self.optim is not None:
            return self.optim
        return "adamw_8bit" if device == "cuda" and not launched_with_fsdp() else "adamw_torch"


@dataclass(frozen=True)
class LoadingConfig:
    """How the base model is loaded and run.

    backend: "unsloth" (FastModel: fused kernels, offloaded checkpointing, chunked loss on a GPU;
    its CPU fallback elsewhere) or "peft" (transformers + bitsandbytes + peft). precision: the
    frozen base's weights, one of PRECISIONS; the loader takes "nf4-dq", "nf4" and, for an
    unquantized base, the dtype the model computes in ("bf16" with compute_dtype "bfloat16", ...);
    "int8" is for estimates. compute_dtype: "auto" (`lib.precision`'s policy: bfloat16 where the
    GPU or CPU runs it fast, else float32), "bfloat16", "float16" or "float32".
    gradient_checkpointing: "off", "standard" (recompute each layer in backward) or "offloaded"
    (unsloth's: the saved layer inputs go to CPU RAM; peft has none and uses "standard"); None
    takes the backend's default ("offloaded" under unsloth, "standard" under peft).
    dora_implementation (when the adapter uses DoRA): "fast" (`lib.fast_dora`: the same parameters
    and files, the norm computed once per optimizer step) or "peft" (peft's own, unsloth's too).
    """

    backend: str = "unsloth"
    precision: str = "nf4-dq"
    compute_dtype: str = "auto"
    gradient_checkpointing: str | None = None
    dora_implementation: str = "fast"

    def __post_init__(self):
        _check("backend", self.backend, BACKENDS)
        _check("precision", self.precision, PRECISIONS)
        _check("compute_dtype", self.compute_dtype, COMPUTE_DTYPES)
        _check("dora_implementation", self.dora_implementation, DORA_IMPLEMENTATIONS)
        if self.gradient_checkpointing is not None:
            _check("gradient_checkpointing", self.gradient_checkpointing, CHECKPOINTING)

    @property
    def checkpointing(self) -> str:
        """The gradient checkpointing that runs: `gradient_checkpointing`, or the backend's default.
        (None stays None in the field, so that a spec moved to another backend takes that one's.)"""
        if self.gradient_checkpointing is not None:
            return self.gradient_checkpointing
        return "offloaded" if self.backend == "unsloth" else "standard"

    @property
    def load_in_4bit(self) -> bool:
        return self.precision in ("nf4", "nf4-dq")

    @property
    def loss(self) -> str:
        """How the backend computes the loss on a GPU: "chunked" (unsloth's fused cross-entropy,
        a fixed workspace) or "full" (the logits of every token; transformers + peft)."""
        return "chunked" if self.backend == "unsloth" else "full"


SECTIONS = {"adapter": TrinityConfig, "optimisation": TrainingConfig, "loading": LoadingConfig}
# Which part holds each field: the names are unique across the parts.
FIELD_SECTION = {f.name: section for section, cls in SECTIONS.items() for f in fields(cls)}


@dataclass(frozen=True)
class RunSpec:
    """One training run (see the module docstring). Build one with `RunSpec.of`, change it with
    `replace`; both take any part's field by name and raise ValueError naming an unknown one."""

    model: object = "gemma-3-270m"
    adapter: TrinityConfig = field(default_factory=TrinityConfig)
    optimisation: TrainingConfig = field(default_factory=TrainingConfig)
    loading: LoadingConfig = field(default_factory=LoadingConfig)

    @classmethod
    def of(cls, model="gemma-3-270m", **changes) -> "RunSpec":
        """The default spec for `model` with `changes` (field names of any part)."""
        return cls(model=model).replace(**changes)

    def replace(self, **changes) -> "RunSpec":
        unknown = sorted(set(changes) - set(FIELD_SECTION) - {"model"})
        if unknown:
            raise ValueError(f"unknown run spec field(s) {unknown}; fields: model, {', '.join(FIELD_SECTION)}")
        parts = {section: {k: v for k, v in changes.items() if FIELD_SECTION.get(k) == section}
                 for section in SECTIONS}
        if "target_modules" in parts["adapter"]:
            parts["adapter"]["target_modules"] = tuple(parts["adapter"]["target_modules"])
        return replace(self, model=changes.get("model", self.model),
                       **{section: replace(getattr(self, section), **values)
                          for section, values in parts.items() if values})

    @property
    def model_name(self) -> str:
        """`model` as text: itself, or a Gemma3Shape's name."""
        return self.model if isinstance(self.model, str) else getattr(self.model, "name", str(self.model))

    def to_dict(self) -> dict:
        """JSON-ready: {"model", "adapter", "optimisation", "loading"} (the inverse of `from_dict`)."""
        return {"model": self.model_name, **{section: asdict(getattr(self, section)) for section in SECTIONS}}

    @classmethod
    def from_dict(cls, data: dict) -> "RunSpec":
        """A RunSpec from `to_dict`'s output; raises ValueError naming an unknown part or field."""
        unknown = sorted(set(data) - set(SECTIONS) - {"model"})
        if unknown:
            raise ValueError(f"unknown run spec part(s) {unknown}; parts: model, {', '.join(SECTIONS)}")
        flat = {k: v for section in SECTIONS for k, v in data.get(section, {}).items()}
        return cls.of(data.get("model", "gemma-3-270m"), **flat)

    def describe(self) -> str:
        """One line: "12B nf4-dq r=64 DoRA [all linear] seq=4096 batch=1x1 adamw_8bit ckpt=offloaded ..."."""
        a, o, lo = self.adapter, self.optimisation, self.loading
        return (f"{self.model_name} {lo.precision} r={a.rank} {'DoRA' if a.use_dora else 'LoRA'} [{_targets(a, 'all linear')}] "
                f"seq={o.max_seq_length} batch={o.batch_size}x{o.gradient_accumulation_steps} "
                f"{o.optimizer_for('cuda')} ckpt={lo.checkpointing} loss={lo.loss} ({lo.backend})"
                + ("" if lo.compute_dtype in ("auto", "bfloat16") else f" {lo.compute_dtype}"))

    def short(self) -> str:
        """The settings the OOM ladder changes: "seq 4096, r=64 DoRA all, batch 1x1, adamw_8bit"."""
        a, o = self.adapter, self.optimisation
        return (f"seq {o.max_seq_length}, r={a.rank} {'DoRA' if a.use_dora else 'LoRA'} {_targets(a, 'all')}, "
                f"batch {o.batch_size}x{o.gradient_accumulation_steps}, {o.optimizer_for('cuda')}")


def _targets(adapter: TrinityConfig, everything: str) -> str:
    if set(adapter.target_modules) == set(ALL_LINEAR_MODULES):
        return everything
    return "+".join(m.replace("_proj", "") for m in adapter.target_modules)
