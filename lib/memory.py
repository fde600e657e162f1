"""GPU memory of a QLoRA / Trinity training step, term by term, from a Gemma 3 config.

The estimate is the peak of PyTorch's allocator (`torch.cuda.max_memory_allocated`) during a
training step, split into the terms alive at that moment:

- weights: exact, from the shapes. bitsandbytes quantizes the 7 projections of every layer
  (NF4: 4 bits + one fp32 absmax per 64 weights = 4.5 bits; with double quantization the absmax
  are 8-bit with one fp32 constant per 256 blocks = 4.127 bits; QLoRA, Dettmers et al. 2023,
  arXiv:2305.14314, section 3; LLM.int8: 8 bits + an fp32 scale per row, arXiv:2208.07339). The
  embedding (tied to the output head) and the norms stay in the compute dtype, except that peft's
  `prepare_model_for_kbit_training` casts them to fp32 (peft docs, "Quantization").
- adapter and gradients: exact, 4 bytes per trainable parameter (`trainable_tensors`):
  peft and unsloth both keep LoRA weights in fp32 (peft's `autocast_adapter_dtype`; measured).
- optimizer: exact. AdamW keeps two fp32 moments (8 bytes/param; Loshchilov & Hutter,
  arXiv:1711.05101). bitsandbytes' 8-bit AdamW keeps them as uint8 with an fp32 absmax per block
  of 256, but tensors under 4096 elements stay 32-bit (Dettmers et al. 2021, arXiv:2110.02861;
  bitsandbytes `min_8bit_size`). Paged optimizers put the 8-bit states in CUDA unified memory,
  outside PyTorch's allocator, evicted to CPU RAM under pressure (bitsandbytes docs, "Paged optimizers").
- activations and logits: modelled, not exact. Per token, a gated-MLP layer saves tensors whose
  size scales with the MLP width I (Korthikanti et al. 2022, arXiv:2205.05198, section 4);
  gradient checkpointing keeps only each layer's input (L x h per token) and recomputes one layer
  at a time in backward (Chen et al. 2016, arXiv:1604.06174); unsloth's offloaded checkpointing
  moves those inputs to CPU RAM. DoRA adds, per layer, the weight norm ||W + s B A|| computed
  through a full out x in matrix (DoRA, arXiv:2402.09353, section 4.3; peft materialises it in
  fp32); the course's fast DoRA (`lib.fast_dora`) does not, and its few extra buffers are
  counted (`FAST_DORA_BYTES`). The full-vocabulary loss keeps the logits of every token (262k entries: bf16 logits,
  their fp32 copy, the fp32 softmax and its gradient); a chunked loss (unsloth's fused
  cross-entropy; Cut Cross-Entropy, Wijmans et al. 2024, arXiv:2411.09009) keeps a fixed workspace.
  The bytes per unit of each of these are coefficients fitted to the GPU measurements in
  data/measurements/gpu-memory-grid.json (`fit_coefficients`, held-out check in chapter 02).
- compute dtype: the grid was measured in bfloat16. float16 takes the same bytes; in float32 the
  terms that hold activations (`ACTIVATION_TERMS`) take twice as many, while the logits (already
  upcast to fp32 for the loss) and DoRA's norm (materialised in fp32) do not change. That rule is
  checked against float32 and float16 runs in data/measurements/gpu-memory-dtype.json.

The peak happens at one of two moments, and the estimate takes the larger:
"loss" (end of the forward pass: checkpoints + logits; gradients do not exist yet) or
"backward" (gradients + the recomputed layer's activations + DoRA's norm temporaries).
Overheads outside the allocator's peak: allocator slack (reserved - allocated) and the CUDA context.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

from .gemma3 import Gemma3Shape, parameter_counts, shape_of
from .lora import ALL_LINEAR_MODULES
from .run_spec import RunSpec

GIB = 2**30
# Modelled terms made of activations, whose bytes follow the compute dtype (2 bytes in bf16/fp16).
ACTIVATION_TERMS = ("checkpoints", "layer_recompute", "no_checkpointing_peft", "no_checkpointing_unsloth",
                    "dora_tokens", "dequantized_weight", "fast_dora_backward", "norm_graph_pool")
MEASUREMENTS = Path(__file__).resolve().parent.parent / "data" / "measurements" / "gpu-memory-grid.json"
DTYPE_MEASUREMENTS = MEASUREMENTS.with_name("gpu-memory-dtype.json")  # the compute-dtype check

# Bytes per unit of each modelled feature (see `features`), fitted by `fit_coefficients` to
# data/measurements/gpu-memory-grid.json (H200, 2026-11-22; 93 points). test_memory refits and
# requires these values, so they cannot drift from the stored measurements.
COEFFICIENTS = {
    "logits_full": 12.4618, "logits_chunked": 2448.3, "checkpoints": 2.31662, "layer_recompute": 18.854,
    "no_checkpointing_peft": 44.346, "no_checkpointing_unsloth": 31.8464, "dora_tokens": 8.41133,
    "dora_norm": 20.0351, "dequantized_weight": 0.596447,
}
# lib.fast_dora's memory over LoRA, counted rather than fitted (the grid measured peft's DoRA),
# bytes per unit of its `features` (bf16; the activation terms double in float32):
# - fast_dora_backward: ScaleChannels' one backward temporary, tokens x the largest targeted out;
# - fast_dora_norms: the float32 norm buffers, one per output channel of every targeted layer;
# - norm_graph_pool: the norm-refresh CUDA graph's private pool, per element of the largest targeted
#   weight: 2 bytes of its dequantized copy, and 272 MiB measured for the 27B's 220.5 MiB weight
#   (its pool also keeps the blocks of the smaller weights refreshed before: 2 x 1.234 bytes;
#   data/measurements/dora-benchmark-h100-2026-12-07.json). Only where the graph is used
#   (`lib.fast_dora.norm_graph_fits`: not under an L4's memory for the 27B).
FAST_DORA_BYTES = {"fast_dora_backward": 2.0, "fast_dora_norms": 4.0, "norm_graph_pool": 2.0 * 1.234}
# Reserved / allocated - 1 at the peak (90th percentile over the grid) and the CUDA context
# (device memory PyTorch does not see), both measured with the grid (`overheads`).
ALLOCATOR_SLACK = 0.1331
CUDA_CONTEXT_GIB = 0.6043


@lru_cache(maxsize=64)
def _folder_shape(folder: str) -> Gemma3Shape:
    from transformers import AutoConfig

    return shape_of(AutoConfig.from_pretrained(folder))


def model_shape(model) -> Gemma3Shape:
    """The shape of a run spec's `model`: a Gemma3Shape, a size or a model id naming one
    (`lib.gemma3.shape_of`), or a local folder's config.json. Raises KeyError for another."""
    if isinstance(model, str) and (Path(model).expanduser() / "config.json").exists():
        return _folder_shape(str(Path(model).expanduser()))
    return shape_of(model)


def gpu_run(model="12B", **changes) -> RunSpec:
    """A run at the source documents' GPU setting, the 12B Trinity at 4096 tokens and batch 1
    (unsloth, NF4 with double quantization, r=64, DoRA, 8-bit AdamW), with `changes` (any
    `RunSpec` field by name): `estimate(gpu_run("27B", rank=32))`."""
    return RunSpec.of(model, **({"batch_size": 1, "max_seq_length": 4096} | changes))


def estimable(spec: RunSpec) -> RunSpec:
    """`spec` if the estimator models it, else ValueError naming what it does not model: target
    modules outside the 7 projections. compute_dtype "auto" is estimated as bfloat16 (what the
    course computes in on a GPU with bfloat16; pass "float32" for a T4, `lib.precision.gpu_precision`)."""
    unknown = set(spec.adapter.target_modules) - set(ALL_LINEAR_MODULES)
    if unknown or not spec.adapter.target_modules:
        raise ValueError(f"target_modules {spec.adapter.target_modules}: choose among {ALL_LINEAR_MODULES}")
    model_shape(spec.model)  # KeyError for a model it does not know
    return spec


def tokens_per_pass(spec: RunSpec) -> int:
    """Tokens in one forward pass (batch x sequence); accumulation steps run one after another."""
    return spec.optimisation.batch_size * spec.optimisation.max_seq_length


def activation_dtype(spec: RunSpec) -> str:
    """The dtype the estimator sizes activations in: the run's compute dtype, with "auto" taken as
    a 2-byte dtype (bfloat16, or float16 on a GPU without it: the same bytes), as on every GPU."""
    return "bfloat16" if spec.loading.compute_dtype == "auto" else spec.loading.compute_dtype


@dataclass(frozen=True)
class MemoryEstimate:
    """GiB by term at the peak moment (`phase`), the allocator's peak, and device memory needed."""

    weights: float
    adapter: float
    gradients: float
    optimizer: float
    activations: float
    logits: float
    overhead: float
    phase: str

    @property
    def peak_allocated(self) -> float:
        """Predicted torch.cuda.max_memory_allocated, GiB."""
        return self.weights + self.adapter + self.gradients + self.optimizer + self.activations + self.logits

    @property
    def total(self) -> float:
        """Device memory needed, GiB: the allocator's peak plus slack and the CUDA context."""
        return self.peak_allocated + self.overhead

    def as_row(self) -> dict:
        row = {k: round(v, 3) for k, v in asdict(self).items() if isinstance(v, float)}
        return row | {"peak_allocated": round(self.peak_allocated, 3), "total": round(self.total, 3),
                      "phase": self.phase}


# ------------------------------------------------------------------ exact terms

def _linear_bytes(numel: int, out_features: int, precision: str) -> float:
    if precision == "nf4":
        return numel / 2 + numel / 64 * 4
    if precision == "nf4-dq":
        return numel / 2 + numel / 64 + numel / 64 / 256 * 4
    if precision == "int8":
        return numel + out_features * 4
    return numel * {"bf16": 2, "fp16": 2, "fp32": 4}[precision]


def weight_bytes(spec: RunSpec) -> float:
    """Bytes of the frozen model: quantized projections + embedding and norms (see module doc)."""
    shape = model_shape(spec.model)
    counts = parameter_counts(shape)
    linear = sum(shape.num_hidden_layers * _linear_bytes(out * inp, out, spec.loading.precision)
                 for out, inp in shape.linear_shapes().values())
    quantized = spec.loading.precision in ("nf4", "nf4-dq", "int8")
    other_dtype_bytes = 4 if spec.loading.precision == "fp32" or (quantized and spec.loading.backend == "peft") else 2
    other = counts["embedding"] + counts["norms"]
    return linear + other * other_dtype_bytes


def trainable_tensors(spec: RunSpec, magnitudes: bool | None = None) -> list[int]:
    """Element counts of every trainable tensor: A (r x in), B (out x r) and DoRA's m (out) per
    target; only the magnitudes (magnitudes=True) or all but them (False)."""
    shape, adapter, sizes = model_shape(spec.model), spec.adapter, []
    for module in adapter.target_modules:
        out_features, in_features = shape.linear_shapes()[module]
        if magnitudes is not True:
            sizes += [adapter.rank * in_features, out_features * adapter.rank]
        if magnitudes is not False and adapter.use_dora:
            sizes.append(out_features)
    return sizes * shape.num_hidden_layers


def adapter_bytes(spec: RunSpec) -> float:
    """Bytes of the trainable adapter in fp32 (the same for its gradients)."""
    return 4 * sum(trainable_tensors(spec))


def optimizer_bytes(spec: RunSpec) -> float:
    """Bytes of optimizer state inside PyTorch's allocator (see module doc for the sources).

    8-bit: per tensor of >= 4096 elements, 2 uint8 moments + 2 fp32 absmax per block of 256 + 2
    256-entry fp32 code tables; smaller tensors keep 2 fp32 moments. Paged 8-bit: the uint8
    moments live in paged (unified) memory; absmax, code tables and small tensors stay. Fast
    DoRA's magnitudes under either: 2 fp32 moments (torch's AdamW, as the course's trainer runs them).
    """
    total, optimizer = 0.0, spec.optimisation.optimizer_for("cuda")
    # The course's trainer steps fast DoRA's magnitudes in torch's AdamW beside bitsandbytes'
    # (lib.fast_dora.magnitudes_in_fused_adamw): two fp32 moments each, whatever their size.
    fused = optimizer != "adamw_torch" and spec.adapter.use_dora and spec.loading.dora_implementation == "fast"
    total += 8 * sum(trainable_tensors(spec, magnitudes=True)) if fused else 0.0
    for n in trainable_tensors(spec, magnitudes=False if fused else None):
        if optimizer == "adamw_torch" or n < 4096:
            total += 8 * n
        else:  # absmax and code tables stay in the allocator; paged moments do not
            total += 2 * 4 * math.ceil(n / 256) + 2 * 256 * 4 + (2 * n if optimizer == "adamw_8bit" else 0)
    return total


FULL_FINETUNE_MODES = {
    # bytes per parameter: weights, gradients, AdamW's two moments (they take the parameter's dtype)
    "mixed": (4, 4, 8),   # fp32 master weights with bf16 autocast: the usual mixed precision
    "bf16": (2, 2, 4),    # everything in bf16 (AdamW states too): half the memory, less exact updates
}


def full_finetune_bytes(shape, mode: str = "mixed") -> dict[str, float]:
    """Bytes of full fine-tuning's static terms for a Gemma 3 size or config, every parameter trained
    with AdamW (Loshchilov & Hutter 2019): {"parameters", "weights", "gradients", "optimizer",
    "total"}; activations and logits come on top. mode: "mixed" (fp32 weights, gradients and
    states, bf16 compute; Micikevicius et al. 2018) or "bf16". Raises KeyError for another mode."""
    from .gemma3 import parameter_counts

    weights, gradients, states = FULL_FINETUNE_MODES[mode]
    n = parameter_counts(shape)["total"]
    terms = {"parameters": n, "weights": n * weights, "gradients": n * gradients, "optimizer": n * states}
    return terms | {"total": terms["weights"] + terms["gradients"] + terms["optimizer"]}


def optimizer_state_bytes(optimizer) -> int:
    """Bytes of a live optimizer's state tensors inside PyTorch's allocator (paged ones excluded):
    what `optimizer_bytes` estimates."""
    return sum(t.numel() * t.element_size() for state in optimizer.state.values() for t in state.values()
               if hasattr(t, "element_size") and getattr(t, "is_paged", False) is False)


# ------------------------------------------------------------------ modelled terms

def features(spec: RunSpec, norm_graph_pool: bool = True) -> dict[str, dict[str, float]]:
    """Units of each modelled term, per phase: {"loss": {...}, "backward": {...}}.

    tokens = batch x seq; V vocabulary, L layers, h hidden size, I MLP width. DoRA's terms depend
    on spec.loading.dora_implementation: peft's are fitted (`COEFFICIENTS`); the fast DoRA's are
    counted (`FAST_DORA_BYTES`), its norm-refresh graph pool only where `norm_graph_pool`.
    """
    s, adapter, loading = model_shape(spec.model), spec.adapter, spec.loading
    checkpointing = loading.checkpointing
    tokens, targeted_out = tokens_per_pass(spec), sum(s.linear_shapes()[m][0] for m in adapter.target_modules)
    largest = max(out * inp for m, (out, inp) in s.linear_shapes().items() if m in adapter.target_modules)
    largest_any = max(out * inp for out, inp in s.linear_shapes().values())
    stored = {"off": 0.0, "standard": tokens * s.num_hidden_layers * s.hidden_size, "offloaded": 0.0}
    no_ckpt = tokens * s.num_hidden_layers * s.intermediate_size if checkpointing == "off" else 0.0
    # without checkpointing every layer keeps its activations; peft's unfused LoRA/DoRA layers keep more
    checkpoints = {"checkpoints": stored[checkpointing], f"no_checkpointing_{loading.backend}": no_ckpt}
    if loading.loss == "full":
        logits = {"logits_full": tokens * s.vocab_size}
    else:
        logits = {"logits_chunked": s.vocab_size}
    backward = {"layer_recompute": tokens * s.intermediate_size * (checkpointing != "off"),
                "dequantized_weight": largest_any}
    persistent = {}  # held from the first forward on: in both phases
    if adapter.use_dora and spec.loading.dora_implementation == "fast":
        largest_out = max(s.linear_shapes()[m][0] for m in adapter.target_modules)
        backward["fast_dora_backward"] = tokens * largest_out
        persistent["fast_dora_norms"] = targeted_out * s.num_hidden_layers
        if norm_graph_pool:
            persistent["norm_graph_pool"] = largest
    elif adapter.use_dora:
        backward |= {"dora_tokens": tokens * targeted_out, "dora_norm": largest}
    scale = 2.0 if activation_dtype(spec) == "float32" else 1.0  # the coefficients are bytes in bf16
    return {phase: {k: v * scale if k in ACTIVATION_TERMS else v for k, v in units.items()}
            for phase, units in (("loss", checkpoints | logits | persistent),
                                 ("backward", checkpoints | backward | persistent))}


def _modelled(units: dict[str, float], coefficients: dict[str, float]) -> tuple[float, float]:
    """(activations, logits) bytes of one phase."""
    logits = sum(units.get(k, 0.0) * coefficients[k] for k in ("logits_full", "logits_chunked"))
    per_unit = coefficients | FAST_DORA_BYTES
    activations = sum(v * per_unit[k] for k, v in units.items() if not k.startswith("logits"))
    return activations, logits


def norm_graph_used(spec: RunSpec, allocator_gib: float | None) -> bool:
    """Whether fast DoRA refreshes its norms through a CUDA graph on a GPU whose allocator may hold
    `allocator_gib` (None: a large card, where it always does): `lib.fast_dora.norm_graph_fits`'s rule."""
    if allocator_gib is None:
        return True
    from .fast_dora import GRAPH_POOL_SHARE

    s = model_shape(spec.model)
    largest = max(out * inp for m, (out, inp) in s.linear_shapes().items() if m in spec.adapter.target_modules)
    itemsize = 4 if activation_dtype(spec) == "float32" else 2
    return largest * itemsize <= GRAPH_POOL_SHARE * allocator_gib * GIB


def estimate(spec: RunSpec, coefficients: dict[str, float] | None = None,
             allocator_gib: float | None = None) -> MemoryEstimate:
    """The memory of one training step of `spec` on a GPU, GiB by term (see the module docstring).
    allocator_gib: what the GPU leaves PyTorch's allocator (decides fast DoRA's norm graph,
    `norm_graph_used`); None for a large card.

    Raises ValueError for settings the estimator does not model (`estimable`), KeyError for an
    unknown model size.
    """
    coefficients = coefficients or COEFFICIENTS
    estimable(spec)
    weights, adapter, optimizer = weight_bytes(spec), adapter_bytes(spec), optimizer_bytes(spec)
    phase_units = features(spec, norm_graph_pool=norm_graph_used(spec, allocator_gib))
    loss_act, loss_logits = _modelled(phase_units["loss"], coefficients)
    back_act, back_logits = _modelled(phase_units["backward"], coefficients)
    loss_peak, back_peak = loss_act + loss_logits, adapter + back_act + back_logits
    phase = "loss" if loss_peak > back_peak else "backward"
    gradients, activations, logits = (0.0, loss_act, loss_logits) if phase == "loss" else (adapter, back_act,
                                                                                           back_logits)
    allocated = (weights + adapter + optimizer + gradients + activations + logits) / GIB
    return MemoryEstimate(weights / GIB, adapter / GIB, gradients / GIB, optimizer / GIB, activations / GIB,
                          logits / GIB, allocated * ALLOCATOR_SLACK + CUDA_CONTEXT_GIB, phase)


# ------------------------------------------------------------------ measurements and fit

def load_measurements(path: str | Path = MEASUREMENTS) -> dict:
    """The stored grid: {"provenance": ..., "rows": [...]} (see tools/memory_grid.py)."""
    return json.loads(Path(path).read_text())


def spec_of(row: dict) -> RunSpec:
    """The run spec a measured row describes. A row without `dora_implementation` is peft's DoRA:
    the grid (2026-11-22) was measured before the fast DoRA existed."""
    checkpointing = None if row["checkpointing"] == "default" else row["checkpointing"]
    return RunSpec.of(row["size"], backend=row["backend"], precision=row["precision"], rank=row["rank"],
                      target_modules=tuple(row["targets"]), use_dora=row["dora"], optim=row["optimizer"],
                      gradient_checkpointing=checkpointing, max_seq_length=row["seq"], batch_size=row["batch"],
                      compute_dtype=row.get("compute_dtype", "bfloat16"),
                      dora_implementation=row.get("dora_implementation", "peft"))


def measured_rows(measurements: dict | None = None) -> list[dict]:
    """Rows that completed (outcome "ok"), each with its `spec` (`spec_of`)."""
    measurements = measurements or load_measurements()
    return [row | {"spec": spec_of(row)} for row in measurements["rows"] if row.get("outcome") == "ok"]


def fit_coefficients(rows: list[dict], iterations: int = 20) -> dict[str, float]:
    """Least-squares bytes per unit of each feature, fitted to measured peaks (non-negative).

    The peak is the larger of two phases, so the fit alternates: assign each row to the phase
    the current coefficients predict, solve the linear least squares of peak - exact terms on
    that phase's features, repeat until no row changes phase. Relative errors are minimised (each
    row weighted 1/peak). Two starts (every row at "loss", every row at "backward"); the
    coefficients with the smaller largest error win.
    """
    fits = [_fit_from(rows, [start] * len(rows), iterations) for start in ("loss", "backward")]
    return min(fits, key=lambda c: max(abs(r["error"]) for r in comparison(rows, c)))


def _fit_from(rows: list[dict], phases: list[str], iterations: int) -> dict[str, float]:
    import numpy as np

    names = list(COEFFICIENTS)
    coefficients = dict.fromkeys(names, 0.0)
    for _ in range(iterations):
        matrix, target = [], []
        for row, phase in zip(rows, phases):
            spec = row["spec"]
            static = weight_bytes(spec) + adapter_bytes(spec) + optimizer_bytes(spec)
            static += adapter_bytes(spec) if phase == "backward" else 0.0
            units = features(spec)[phase]
            static += sum(units.get(k, 0.0) * FAST_DORA_BYTES[k] for k in FAST_DORA_BYTES)  # counted, not fitted
            weight = 1 / (row["peak_allocated_gib"] * GIB)
            matrix.append([units.get(k, 0.0) * weight for k in names])
            target.append((row["peak_allocated_gib"] * GIB - static) * weight)
        solution = _nonnegative_least_squares(np.array(matrix), np.array(target))
        coefficients = dict(zip(names, (float(x) for x in solution)))
        new = [estimate(r["spec"], coefficients).phase for r in rows]
        if new == phases:
            break
        phases = new
    return coefficients


def _nonnegative_least_squares(a, b):
    """min ||a x - b|| with x >= 0 (active-set by elimination: small problems only)."""
    import numpy as np

    active = list(range(a.shape[1]))
    while True:
        x = np.zeros(a.shape[1])
        x[active] = np.linalg.lstsq(a[:, active], b, rcond=None)[0] if active else []
        negative = [i for i in active if x[i] < 0]
        if not negative:
            return x
        active.remove(min(negative, key=lambda i: x[i]))


def overheads(measurements: dict | None = None) -> dict[str, float]:
    """{"allocator_slack": 90th percentile of reserved/allocated - 1 over the grid, "cuda_context_gib"}."""
    import numpy as np

    measurements = measurements or load_measurements()
    rows = measured_rows(measurements)
    slack = float(np.quantile([r["peak_reserved_gib"] / r["peak_allocated_gib"] - 1 for r in rows], 0.9))
    return {"allocator_slack": slack, "cuda_context_gib": measurements["provenance"]["cuda_context_gib"]}


def comparison(rows: list[dict], coefficients: dict[str, float] | None = None) -> list[dict]:
    """Measured vs estimated peak allocated for each row: GiB and relative error."""
    table = []
    for row in rows:
        predicted = estimate(row["spec"], coefficients).peak_allocated
        table.append({"setup": row["spec"].describe(), "size": row["size"], "backend": row["backend"],
                      "seq": row["seq"], "tag": row["tag"], "measured_gib": row["peak_allocated_gib"],
                      "estimated_gib": predicted, "error": predicted / row["peak_allocated_gib"] - 1})
    return table


def leave_one_size_out(rows: list[dict]) -> list[dict]:
    """`comparison` where each size's rows are predicted by coefficients fitted without that size."""
    table = []
    for size in dict.fromkeys(r["size"] for r in rows):
        held_out = [r for r in rows if r["size"] == size]
        coefficients = fit_coefficients([r for r in rows if r["size"] != size])
        table += comparison(held_out, coefficients)
    return table


# ------------------------------------------------------------------ GPUs

@dataclass(frozen=True)
class GPUProfile:
    """A GPU as PyTorch sees it: total memory (GiB, `torch.cuda.get_device_properties().total_memory`,
    below the marketing GB because of ECC and the driver's reserve) and bf16 support."""

    name: str
    memory_gib: float
    bf16: bool
    source: str


GPU_PROFILES = {g.name: g for g in [
    GPUProfile("T4", 14.56, False, "PyTorch OOM message on a Tesla T4, github.com/Zheng-Chong/CatVTON/issues/133 "
                                   "(older drivers show 14.75)"),
    GPUProfile("L4", 22.03, True, "PyTorch OOM message on an L4, github.com/ArcInstitute/evo2/issues/190"),
    GPUProfile("A10G", 22.03, True, "assumed equal to the L4 (both 24 GB GDDR6 with ECC); not measured here"),
    GPUProfile("A100-40GB", 39.50, True, "PyTorch OOM message on an A100 40GB, github.com/TianheWu/CoSeR/issues/10"),
    GPUProfile("A100-80GB", 79.25, True, "PyTorch OOM message on an A100 80GB, github.com/HiDream-ai/VAREdit/issues/6"),
    GPUProfile("H100-80GB", 79.18, True, "torch total_memory on this project's H100 (data/measurements/oom-ladder-gpu.json)"),
]}


def gpu_profile(name: str) -> GPUProfile:
    """The profile of a GPU by name (case-insensitive; "A100" means the 40 GB model).

    Raises KeyError listing the known GPUs.
    """
    aliases = {"A100": "A100-40GB", "H100": "H100-80GB"}
    key = {k.lower(): k for k in GPU_PROFILES}.get(aliases.get(name.upper(), name).lower())
    if key is None:
        raise KeyError(f"unknown GPU {name!r}; known: {', '.join(GPU_PROFILES)}")
    return GPU_PROFILES[key]


def fits(spec: RunSpec, gpu: GPUProfile | str) -> bool:
    """True when the estimated device memory (peak + slack + CUDA context) is within the GPU's."""
    gpu = gpu_profile(gpu) if isinstance(gpu, str) else gpu
    return estimate(spec, allocator_gib=gpu.memory_gib - CUDA_CONTEXT_GIB).total <= gpu.memory_gib


def measured_peak(rows: list[dict], size: str, backend: str = "unsloth", seq: int = 4096, rank: int = 64,
                  dora: bool = True, targets=ALL_LINEAR_MODULES, optimizer: str = "adamw_8bit",
                  checkpointing: str = "default", batch: int = 1) -> float:
    """The measured peak allocated (GiB) of one grid point. Raises KeyError if it was not measured."""
    for r in rows:
        if (r["size"], r["backend"], r["seq"], r["rank"], r["dora"], tuple(r["targets"]), r["optimizer"],
                r["checkpointing"], r["batch"]) == (size, backend, seq, rank, dora, tuple(targets), optimizer,
                                                     checkpointing, batch):
            return r["peak_allocated_gib"]
    raise KeyError(f"no measurement for {size} {backend} seq={seq} r={rank} dora={dora} targets={targets} "
                   f"{optimizer} {checkpointing} batch={batch}")


def backend_ratios(runs: list[dict]) -> dict[str, dict[str, float]]:
    """transformers + peft over unsloth, from runs of the same shape, sequence and adapter (the GPU
    anchor's rows: shape, max_seq_length, dora, backend "hf" or "unsloth", peak_allocated_gib,
    seconds_per_step): {"12B Trinity seq 4096": {"memory_ratio", "speedup"}} for each setting run
    with both backends. Ratios above 1 favour unsloth."""
    pairs: dict[tuple, dict[str, dict]] = {}
    for r in runs:
        pairs.setdefault((r["shape"], r["max_seq_length"], r["dora"]), {})[r["backend"]] = r
    return {f"{shape} {'Trinity' if dora else 'LoRA'} seq {seq}": {
                "memory_ratio": pair["hf"]["peak_allocated_gib"] / pair["unsloth"]["peak_allocated_gib"],
                "speedup": pair["hf"]["seconds_per_step"] / pair["unsloth"]["seconds_per_step"]}
            for (shape, seq, dora), pair in pairs.items() if {"hf", "unsloth"} <= set(pair)}


def exact_term_errors(rows: list[dict]) -> dict[str, dict[str, float]]:
    """For weights, adapter and optimizer: the largest difference between the estimate and what
    the GPU counted over `rows` (`measured_rows`), {"largest difference (MiB)", "relative"}."""
    worst = {}
    for r in rows:
        spec = r["spec"]
        pairs = {"weights": (r["weights_gib"], weight_bytes(spec) / GIB),
                 "adapter": (r["adapter_gib"], adapter_bytes(spec) / GIB),
                 "optimizer": (r["optimizer_gib"], optimizer_bytes(spec) / GIB)}
        for term, (measured, estimated) in pairs.items():
            current = worst.setdefault(term, {"largest difference (MiB)": 0.0, "relative": 0.0})
            current["largest difference (MiB)"] = max(current["largest difference (MiB)"],
                                                       abs(estimated - measured) * 1024)
            current["relative"] = max(current["relative"], abs(estimated / measured - 1))
    return worst
