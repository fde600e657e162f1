"""Fast DoRA: peft's DoRA parameters and adapter files, with its per-channel norm computed once
per optimizer step by expansion instead of at every forward (`use_fast_dora`, the Trinity's default).

peft computes DoRA's per-channel norm ||W + s B A||_row at every forward (and again at every
gradient-checkpointing recompute) by materialising W and B A as out x in matrices, and B A
itself as B(A(I_in)), an in x in identity pushed through the adapter. Expanding the square
needs none of that:

    ||W_i + s (BA)_i||^2 = ||W_i||^2 + 2 s B_i . (A W^T)_:,i + s^2 B_i (A A^T) B_i^T

||W_i||^2 is fixed (W is frozen) and cached once; A W^T (r x out) is the base layer applied to
the r rows of A (one small extra matmul); A A^T is r x r. The norm is a constant in backward
(DoRA section 4.3, as in peft), so it only changes when A or B do: once per optimizer step. It
lives in a buffer refreshed before the model's forward, so the layer's forward is plain tensor
code that torch.compile (unsloth compiles every decoder layer) traces without a graph break:
a LoRA forward and a per-channel scale, y = m / norm * (W x + s B A x).
"""

from __future__ import annotations

import functools

import torch

_optimizer_steps = 0  # counted by a global optimizer hook; part of every cached norm's key
_step_hook = None


def _count_optimizer_step(optimizer, args, kwargs) -> None:
    global _optimizer_steps
    _optimizer_steps += 1


def _base_row_norms_squared(module) -> torch.Tensor:
    """||W_i||^2 of the frozen base weight (out,), float32; recomputed only if W's storage changes."""
    from peft.utils.integrations import dequantize_module_weight

    weight = module.get_base_layer().weight
    key = (weight.data_ptr(), weight._version, str(weight.device))
    cached = getattr(module, "_dora_base_norms", None)
    if cached is None or cached[0] != key:
        dense = dequantize_module_weight(module.get_base_layer())
        cached = (key, torch.linalg.vector_norm(dense, dim=1, dtype=torch.float32) ** 2)
        module._dora_base_norms = cached
    return cached[1]


@torch.no_grad()
def weight_norm_by_expansion(module, adapter: str = "default") -> torch.Tensor:
    """||W + s B A||_row of a peft DoRA Linear layer, (out,) float32, with no out x in temporary.

    W (out x in) is only touched through the base layer's own forward (A W^T, r x out) and the cached
    ||W_i||^2. Liu et al. 2024 (arXiv:2402.09353), eq. 5.
    """
    a, b = module.lora_A[adapter].weight, module.lora_B[adapter].weight
    scaling = module.scaling[adapter]
    base_layer = module.get_base_layer()
    compute_dtype = getattr(base_layer, "compute_dtype", None) or base_layer.weight.dtype
    a_w = base_layer(a.to(compute_dtype)).float()  # (r, out) = A W^T (+ bias)
    if getattr(base_layer, "bias", None) is not None:
        a_w = a_w - base_layer.bias.float()
    a, b = a.float(), b.float()
    # row i of B times (2 s (A W^T)^T + s^2 B A A^T), summed: both terms in one pass over (out, r)
    terms = torch.addmm(a_w.T, b, a @ a.T, beta=2 * scaling, alpha=scaling**2)
    squared = _base_row_norms_squared(module) + (b * terms).sum(dim=1)
    return squared.clamp_min(0).sqrt()


def _norm_key(module, adapter: str) -> tuple:
    """What the norm depends on: A and B (versions, storage), s, and the optimizer steps taken."""
    a, b = module.lora_A[adapter].weight, module.lora_B[adapter].weight
    return (_optimizer_steps, a._version, b._version, a.data_ptr(), b.data_ptr(), module.scaling[adapter])


@torch.compiler.disable
def dora_weight_norm(module, adapter: str = "default") -> torch.Tensor:
    """The layer's DoRA norm buffer (out,) float32, recomputed first if A, B or W changed.

    Changed means: their version counters or storage, or the count of optimizer steps taken by
    any torch optimizer (8-bit optimizers write through a pointer). So gradient-checkpointing
    recomputes and gradient-accumulation micro-batches reuse one norm per optimizer step.
    """
    key = _norm_key(module, adapter)
    dora_layer = module.lora_magnitude_vector[adapter]
    if getattr(dora_layer, "_norm_key", None) != key:
        dora_layer.weight_norm.copy_(weight_norm_by_expansion(module, adapter))
        dora_layer._norm_key = key
    return dora_layer.weight_norm


class ScaleChannels(torch.autograd.Function):
    """y = z * m / norm per output channel: z (tokens, out) in the compute dtype, m (out,) the DoRA
    magnitude (trainable), norm (out,) float32 (a constant, DoRA section 4.3); y in z's dtype.

    The product is taken in float32 and rounded once into z's dtype, as peft's float32 scale does:
    rounding m / norm itself to bfloat16 would move it in steps of 2^-7 near 1, coarser than what
    training changes it by. Saves y rather than z (dy/dm = z / norm = y / m): the next op of a
    decoder layer (an activation, a product, a norm) saves y anyway, so DoRA's scale adds no saved
    activation (measured: +0.35 instead of +0.59 GiB over LoRA for the 12B at 4096 tokens).

    Temporaries of z's size, each 168 MiB for the 27B's gate/up projections at 4096 tokens: none
    in forward (z must be a fresh tensor no one else holds, the LoRA update's addmm output: it is
    scaled in place), one in backward (y * dy, whose storage then takes dz): +0.31 GiB over LoRA
    for the 27B at 4096 tokens (H100, 2026-12-07), +0.47 with a temporary each way (H200,
    2026-12-03). y and dy are not written: a caller may hold the layer's output, and an add's
    backward hands one dy to both branches. Needs m != 0: m starts at ||W||_row > 0.
    """

    @staticmethod
    def forward(ctx, z: torch.Tensor, magnitude: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
        scale = magnitude.detach().float() / norm
        z.mul_(scale)  # float32 product, rounded into z's dtype: z is y from here on
        ctx.mark_dirty(z)
        ctx.save_for_backward(z, scale, magnitude)
        return z

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        y, scale, magnitude = ctx.saved_tensors
        products = grad_y * y
        grad_m = products.sum(dim=0, dtype=torch.float32) / magnitude.float()
        grad_z = torch.mul(grad_y, scale, out=products)  # float32 product, rounded into dy's dtype
        return grad_z, grad_m.to(magnitude.dtype), None


@functools.cache
def _fast_variant_class():
    from peft.tuners.lora.variants import DoraLinearVariant

    class FastDoraLinearVariant(DoraLinearVariant):
        """peft's DoRA for Linear layers with the norm from `dora_weight_norm`: same parameters, so
        the same state dict, merging and adapter files; only `forward` differs. The adapter's
        matmuls run in the base output's dtype, as unsloth's LoRA forward does."""

        @staticmethod
        def forward(module, active_adapter: str, x: torch.Tensor, result: torch.Tensor, **kwargs) -> torch.Tensor:
            if not torch.compiler.is_compiling():  # compiled: refreshed by the model's pre-hook
                dora_weight_norm(module, active_adapter)
            dora_layer = module.lora_magnitude_vector[active_adapter]
            lora_a, lora_b = module.lora_A[active_adapter].weight, module.lora_B[active_adapter].weight
            dropout = module.lora_dropout[active_adapter]
            base_layer = module.get_base_layer()
            dtype = result.dtype
            if isinstance(dropout, torch.nn.Identity) or not module.training:
                base_result = result  # W x + bias, already computed
            else:  # peft applies the dropped-out x to both terms of DoRA
                x = dropout(x)
                base_result = base_layer(x.to(dtype))
            if base_layer.bias is not None:
                base_result = base_result - base_layer.bias
            # W x + s (x A^T) B^T in one addmm, as unsloth's LoRA forward adds its update; a fresh
            # (tokens, out) tensor, which ScaleChannels scales in place
            x_a = x.to(dtype) @ lora_a.to(dtype).T
            out = base_result.shape[-1]
            z = torch.addmm(base_result.reshape(-1, out), x_a.reshape(-1, x_a.shape[-1]), lora_b.to(dtype).T,
                            alpha=module.scaling[active_adapter])
            dora = ScaleChannels.apply(z, dora_layer.weight, dora_layer.weight_norm).view(base_result.shape)
            if base_result is result:
                return dora
            return result - base_result + dora  # the bias (and, under dropout, W x - W dropout(x))

    return FastDoraLinearVariant


def fast_dora_layers(model):
    """(module, adapter) of every Linear layer of `model` running the fast DoRA forward."""
    fast = _fast_variant_class()
    return [(module, adapter) for module in model.modules()
            for adapter, variant in getattr(module, "lora_variant", {}).items() if isinstance(variant, fast)]


# A CUDA graph keeps what its capture allocated (its private pool) for as long as it lives: for the
# norm refresh, about one dequantized base weight of the largest layer (272 MiB for the 27B, whose
# MLP weights are 21504 x 5376). Under an L4's memory that pool ran the 27B at 4096 tokens out of
# memory; refreshed eagerly it fit (tools/dora_benchmark.py on an H100, 2026-12-07, data/
# measurements/dora-benchmark-h100-2026-12-07.json). So the graph is used only where its pool is
# at most this share of what the allocator may hold: 1.0% for the 27B on an L4 (eager), 0.27% on
# an 80 GB card (graph).
GRAPH_POOL_SHARE = 0.005


def norm_graph_fits(layers, capacity_bytes: int) -> bool:
    """Whether a CUDA graph of the norm refresh of `layers` ((module, adapter) pairs) is worth its
    private pool: the largest dequantized base weight (out x in, compute dtype) at most
    GRAPH_POOL_SHARE of `capacity_bytes`, what the allocator may hold."""
    def dense_bytes(module):
        base = module.get_base_layer()
        dtype = getattr(base, "compute_dtype", None) or base.weight.dtype
        return base.in_features * base.out_features * dtype.itemsize

    return max(dense_bytes(module) for module, _ in layers) <= GRAPH_POOL_SHARE * capacity_bytes


def allocator_capacity(device: torch.device) -> int:
    """Bytes the CUDA caching allocator may hold on `device`: its memory times the process's
    fraction (torch.cuda.set_per_process_memory_fraction, as chapter 05 caps memory)."""
    total = torch.cuda.get_device_properties(device).total_memory
    return int(total * torch.cuda.get_per_process_memory_fraction(device))


class NormRefresh:
    """Brings every fast DoRA layer's norm up to date: `refresh` now, or `defer` + `before_block`.

    After an optimizer step all of them are stale, and recomputing them one by one is a few
    dozen small kernel launches per layer, each with its Python overhead (0.18-0.26 s per step for
    the 12B on an H100, measured by tools/dora_benchmark.py). On a CUDA GPU the full refresh is
    captured once as a CUDA graph and replayed (0.05 s; recaptured if any tensor moves);
    elsewhere, if capture fails, or where the graph's memory is not to spare (cuda_graph="auto":
    `norm_graph_fits`), layers are refreshed one by one.

    Where the refresh is queued matters on a GPU: a model's forward reads a value back to the host
    before its first decoder layer (transformers' mask code does), and that read waits for every
    kernel queued before it. Queued at the model's forward, the 4B's refresh (22 ms on an H100) was
    such a wait (py-spy, 2026-12-07). So the model's pre-hook (`defer`) only finds what is stale, and
    the pre-hook of every block holding DoRA layers (`before_block`) refreshes it at the first block
    that runs, after that read, while the host is busy launching the layers' kernels.

    overlap=True (with `blocks`, on a GPU, with CUDA graphs): `defer` queues one graph per block on a
    side stream instead, each followed by an event, and each block's pre-hook makes the forward wait
    only for its own block's event. The refresh (mostly dequantizing the base weights: memory
    traffic) then runs beside the forward's first blocks (matrix products) rather than before them.
    """

    def __init__(self, layers, cuda_graph: bool | str = "auto", blocks=None, overlap: bool = False):
        self.layers = layers  # (module, adapter) pairs
        self.cuda_graph = cuda_graph  # True, False, or "auto": decided on the first refresh on a GPU
        self.graph, self.graph_pointers = None, None
        self.pending = None  # (keys, stale indices) found by `defer`, refreshed by `before_block`
        self.blocks = blocks  # [(block, indices into layers)] in forward order (`layers_by_block`)
        self.overlap = overlap
        self.block_graphs, self.side, self.ready = None, None, {}  # ready: id(block) -> its CUDA event

    def _refresh_layers(self, indices) -> None:
        for i in indices:
            module, adapter = self.layers[i]
            module.lora_magnitude_vector[adapter].weight_norm.copy_(weight_norm_by_expansion(module, adapter))

    def _refresh_all(self) -> None:
        self._refresh_layers(range(len(self.layers)))

    def _pointers(self, keys: list) -> tuple:
        """Where the graph's tensors live: A, B (and s) from each layer's `_norm_key`, W and the norm buffer."""
        return tuple(key[3:] + (module.get_base_layer().weight.data_ptr(),
                                module.lora_magnitude_vector[adapter].weight_norm.data_ptr())
                     for (module, adapter), key in zip(self.layers, keys))

    def _warm_up(self) -> None:
        for module, _ in self.layers:
            _base_row_norms_squared(module)  # cached outside the graph
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up, as torch.cuda.graph asks
            self._refresh_all()
        torch.cuda.current_stream().wait_stream(side)

    def _capture(self, keys: list) -> None:
        self._warm_up()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._refresh_all()
        self.graph, self.graph_pointers = graph, self._pointers(keys)

    def _capture_blocks(self, keys: list) -> None:
        """One graph per block, sharing one memory pool (they replay one after another)."""
        self._warm_up()
        pool, graphs = torch.cuda.graph_pool_handle(), []
        for _, indices in self.blocks:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self._refresh_layers(indices)
            graphs.append(graph)
        self.block_graphs, self.graph_pointers = graphs, self._pointers(keys)
        self.side = self.side or torch.cuda.Stream()

    def _graph_allowed(self) -> bool:
        first = self.layers[0][0].lora_A[self.layers[0][1]].weight if self.layers else None
        if not (self.cuda_graph and first is not None and first.is_cuda):
            return False
        if self.cuda_graph == "auto":
            self.cuda_graph = norm_graph_fits(self.layers, allocator_capacity(first.device))
        return bool(self.cuda_graph)

    def _graph_failed(self, error: RuntimeError) -> None:
        import warnings

        warnings.warn(f"fast DoRA: CUDA graph capture failed ({error}); refreshing norms eagerly")
        self.cuda_graph, self.graph, self.block_graphs, self.overlap = False, None, None, False

    def _replay(self, keys: list) -> bool:
        """Refresh all norms through the CUDA graph; False where that is not possible. keys: each
        layer's `_norm_key` now, from the staleness check (a second pass over the 4B's 238 layers
        for the graph's pointers was half of ~5 ms of host time a step; py-spy on an H200)."""
        if not self._graph_allowed():
            return False
        try:
            if self.graph is None or self.graph_pointers != self._pointers(keys):
                self._capture(keys)
            self.graph.replay()
            return True
        except RuntimeError as error:  # e.g. an op that cannot be captured: eager from now on
            self._graph_failed(error)
            return False

    def _launch_beside(self, keys: list) -> bool:
        """Queue every block's graph on the side stream, an event after each (`ready`); False where
        that is not possible (no blocks, no GPU, no graphs)."""
        if not (self.overlap and self.blocks and self._graph_allowed()):
            return False
        try:
            if self.block_graphs is None or self.graph_pointers != self._pointers(keys):
                self._capture_blocks(keys)
            self.side.wait_stream(torch.cuda.current_stream())  # A and B as the optimizer step left them
            ready = {}
            with torch.cuda.stream(self.side):
                for (block, _), graph in zip(self.blocks, self.block_graphs):
                    graph.replay()
                    ready[id(block)] = torch.cuda.Event()
                    ready[id(block)].record(self.side)
        except RuntimeError as error:
            self._graph_failed(error)
            return False
        self.ready = ready
        return True

    @torch.profiler.record_function("fast_dora.find_stale")  # named in a profile's timeline
    def _stale(self) -> tuple[list, list[int]]:
        keys = [_norm_key(module, adapter) for module, adapter in self.layers]
        stale = [i for i, ((module, adapter), key) in enumerate(zip(self.layers, keys))
                 if getattr(module.lora_magnitude_vector[adapter], "_norm_key", None) != key]
        return keys, stale

    def _mark_fresh(self, keys: list) -> None:
        for (module, adapter), key in zip(self.layers, keys):
            module.lora_magnitude_vector[adapter]._norm_key = key

    @torch.profiler.record_function("fast_dora.norm_refresh")
    def _refresh(self, keys: list, stale: list[int]) -> None:
        if len(stale) == len(self.layers) and self._replay(keys):
            self._mark_fresh(keys)
            return
        for i in stale:
            dora_weight_norm(*self.layers[i])

    def _drain(self) -> None:
        """Wait for the side stream's refresh of blocks that did not run (a forward cut short):
        the next optimizer step must not change A and B under it."""
        if self.ready:
            torch.cuda.current_stream().wait_stream(self.side)
            self.ready = {}

    @torch.compiler.disable
    def refresh(self, *hook_args) -> None:
        """Recompute every stale norm now (usable as a forward pre-hook)."""
        self._drain()
        self.pending = None
        self._refresh(*self._stale())

    __call__ = refresh

    @torch.compiler.disable
    def defer(self, *hook_args) -> None:
        """The model's forward pre-hook: note the stale norms for `before_block` to refresh, or
        with `overlap`, queue their refresh beside the forward."""
        self._drain()
        keys, stale = self._stale()
        self.pending = (keys, stale) if stale else None
        if stale and len(stale) == len(self.layers) and self._launch_beside(keys):
            self._mark_fresh(keys)
            self.pending = None

    @torch.compiler.disable
    def before_block(self, *hook_args) -> None:
        """A block's forward pre-hook (hook_args: the block and its inputs): wait for this block's
        norms from the side stream, or refresh what `defer` found stale, once (a gradient
        checkpointing recompute of the block finds nothing pending)."""
        event = self.ready.pop(id(hook_args[0]), None) if self.ready and hook_args else None
        if event is not None:
            torch.cuda.current_stream().wait_event(event)
        if self.pending is not None:
            keys, stale = self.pending
            self.pending = None
            self._refresh(keys, stale)


def layers_by_block(model, layers) -> list[tuple] | None:
    """[(block, indices into `layers`)] in the order of `layers`: each layer's block is its
    outermost ancestor that is an element of a ModuleList (a decoder layer). None if a layer has
    no such ancestor."""
    modules = dict(model.named_modules())
    path = {id(module): name for name, module in modules.items()}
    blocks = {}
    for i, (module, _) in enumerate(layers):
        parts = path[id(module)].split(".")
        block = next((modules[".".join(parts[:j + 1])] for j in range(len(parts))
                      if isinstance(modules[".".join(parts[:j])], torch.nn.ModuleList)), None)
        if block is None:
            return None
        blocks.setdefault(id(block), (block, []))[1].append(i)
    return list(blocks.values())


def dora_blocks(model, layers) -> list | None:
    """The blocks (decoder layers) holding `layers`: for each (module, adapter), its outermost
    ancestor that is an element of a ModuleList. None if a layer has no such ancestor."""
    grouped = layers_by_block(model, layers)
    return None if grouped is None else [block for block, _ in grouped]


def allow_compile_cache() -> None:
    """Let torch's AOTAutograd cache keep compiled graphs that hold `ScaleChannels`.

    By default that cache skips ("bypasses") every graph with a custom autograd.Function in it, so
    each process traces those graphs' joint forward and backward again, warm caches or not: every
    decoder layer of a fast DoRA model under unsloth. Dynamo traces the Function's forward and
    backward into the graph it caches under, so their code is part of the key. The environment
    variable TORCHINDUCTOR_AUTOGRAD_CACHE_ALLOW_CUSTOM_AUTOGRAD=0 still turns it off.
    """
    import torch._functorch.config

    torch._functorch.config.autograd_cache_allow_custom_autograd_functions = True


def use_fast_dora(model, cuda_graph: bool | str = "auto", overlap: bool = False) -> int:
    """Switch every peft DoRA Linear layer of `model` to the fast forward; returns how many.

    Parameters, state dict and adapter files are unchanged (a plain peft install loads what this
    model saves; the norm is a non-persistent buffer). Embedding and convolution DoRA layers keep
    peft's code. Requires peft >= 0.18 (LoRA variants). cuda_graph: refresh the norms through
    a CUDA graph on a GPU (`NormRefresh`): True, False, or "auto" (where its memory is to spare).
    overlap: refresh them on a side stream beside the forward's first blocks (`NormRefresh`).
    """
    global _step_hook
    from peft.tuners.lora.variants import DoraLinearVariant
    from torch.optim.optimizer import register_optimizer_step_post_hook

    fast = _fast_variant_class()
    switched = []
    for module in model.modules():
        for adapter, variant in getattr(module, "lora_variant", {}).items():
            if type(variant) is DoraLinearVariant:
                module.lora_variant[adapter] = fast()
                magnitude = module.lora_magnitude_vector[adapter].weight
                module.lora_magnitude_vector[adapter].register_buffer(
                    "weight_norm", torch.zeros(magnitude.shape, dtype=torch.float32, device=magnitude.device),
                    persistent=False)
                switched.append((module, adapter))
    if switched:
        allow_compile_cache()
        blocks = layers_by_block(model, switched)
        refresh = NormRefresh(switched, cuda_graph, blocks, overlap)
        if blocks is None:  # nowhere to defer to: refresh at the model's forward
            model.register_forward_pre_hook(refresh.refresh)
        else:
            model.register_forward_pre_hook(refresh.defer)
            for block, _ in blocks:
                block.register_forward_pre_hook(refresh.before_block)
        if _step_hook is None:
            _step_hook = register_optimizer_step_post_hook(_count_optimizer_step)
    return len(switched)


def norm_refresh_hook(model) -> NormRefresh:
    """The NormRefresh pre-hook `use_fast_dora` registered on `model`. Raises ValueError if none."""
    hooks = [hook.__self__ for module in model.modules() for hook in module._forward_pre_hooks.values()
             if isinstance(getattr(hook, "__self__", None), NormRefresh)]
    if not hooks:
        raise ValueError("no fast DoRA norm refresh on this model: call lib.fast_dora.use_fast_dora(model) first")
    return hooks[0]


class ChainedOptimizer(torch.optim.Optimizer):
    """Several optimizers over disjoint parameters, stepped, zeroed, saved and scheduled as one.

    `param_groups` is the parts' groups in order, the same dicts: an LR scheduler's changes reach
    every part. `state_dict()` is {"chained": [each part's state dict]}; `load_state_dict` takes only
    that form, with as many parts (ValueError otherwise). The parts keep their own step hooks, so
    torch's global optimizer hooks (fast DoRA's step counter) run once per part.
    """

    def __init__(self, optimizers):
        # Not torch.optim.Optimizer.__init__: the parameters, their groups and state live in the parts.
        self.optimizers = list(optimizers)
        if not self.optimizers:
            raise ValueError("ChainedOptimizer needs at least one optimizer")
        self.param_groups = [group for optimizer in self.optimizers for group in optimizer.param_groups]
        self.defaults = self.optimizers[0].defaults

    @property
    def state(self) -> dict:
        return {p: s for optimizer in self.optimizers for p, s in optimizer.state.items()}

    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for optimizer in self.optimizers:
            optimizer.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"chained": [optimizer.state_dict() for optimizer in self.optimizers]}

    def load_state_dict(self, state_dict: dict) -> None:
        parts = state_dict.get("chained") if isinstance(state_dict, dict) else None
        if parts is None or len(parts) != len(self.optimizers):
            found = f"{len(parts)} parts" if parts is not None else "one optimizer's state"
            raise ValueError(f"optimizer state of {found}, expected {len(self.optimizers)} chained parts "
                             f"({', '.join(type(o).__name__ for o in self.optimizers)}): a checkpoint saved "
                             "with another optimizer split (e.g. on another device) cannot resume here")
        for optimizer, part in zip(self.optimizers, parts):
            optimizer.load_state_dict(part)
        # torch's load_state_dict puts new group dicts in the parts: share those, or a scheduler
        # would go on setting the learning rate of groups no part reads
        self.param_groups = [group for optimizer in self.optimizers for group in optimizer.param_groups]

    def __repr__(self) -> str:
        return f"ChainedOptimizer({', '.join(type(o).__name__ for o in self.optimizers)})"


def magnitudes_in_fused_adamw(optimizer, model):
    """`optimizer` with every fast DoRA magnitude vector moved into torch's AdamW (fused on a GPU),
    as a `ChainedOptimizer`; `optimizer` itself where it is not bitsandbytes' or `model` has no fast
    DoRA layers. Call before the first step (the parameters leave `optimizer`'s groups).

    bitsandbytes' optimizers launch their update once per tensor, with its Python overhead: DoRA's
    magnitudes add one tensor per layer (336 for the 12B) to LoRA's A and B. torch's fused AdamW
    updates them all in one launch: the 12B's optimizer step took 0.039 s with every tensor in
    8-bit AdamW and 0.032 s split, against LoRA's 0.026 (H100, interleaved; data/measurements/
    dora-benchmark-h100-2026-12-07-interleaved-12b.json). Each magnitude keeps its group's lr,
    betas, eps and weight decay; its moments are float32 (8 bytes per entry: 18 MB for the 12B's
    2.2 M magnitudes), which bitsandbytes also uses for tensors under its 4096-entry 8-bit threshold.
    """
    if not type(optimizer).__module__.startswith("bitsandbytes"):
        return optimizer
    magnitudes = {id(module.lora_magnitude_vector[adapter].weight) for module, adapter in fast_dora_layers(model)}
    moved = []
    for group in optimizer.param_groups:
        mine = [p for p in group["params"] if id(p) in magnitudes]
        if mine:
            group["params"] = [p for p in group["params"] if id(p) not in magnitudes]
            moved.append({"params": mine, **{k: group[k] for k in ("lr", "betas", "eps", "weight_decay")}})
    if not moved:
        return optimizer
    fused = all(p.is_cuda for group in moved for p in group["params"]) or None
    optimizer.param_groups = [group for group in optimizer.param_groups if group["params"]]
    return ChainedOptimizer([optimizer, torch.optim.AdamW(moved, fused=fused)])


def compare_with_lora(rows: list[dict]) -> list[dict]:
    """Benchmark rows (tools/dora_benchmark.py) with step time and peak memory relative to LoRA.

    Adds `time_vs_lora` (step seconds / LoRA's) and `gib_over_lora` (peak allocated - LoRA's) to
    each row that has a LoRA row of the same size, backend, memory cap and mode (interleaved or
    not); None otherwise. Interleaved rows compare their paired ratio (`time_vs_lora_paired`) and
    no memory (their peak is all models' together).
    """
    same = lambda r: (r["size"], r["backend"], r.get("cap"), bool(r.get("interleaved")))  # noqa: E731
    lora = {same(r): r for r in rows if r["variant"] == "LoRA" and "step_seconds" in r}
    compared = []
    for r in rows:
        base = lora.get(same(r)) if "step_seconds" in r else None
        time_ratio = r.get("time_vs_lora_paired") or (r["step_seconds"] / base["step_seconds"] if base else None)
        memory = base and r.get("peak_allocated_gib") is not None and base.get("peak_allocated_gib") is not None
        compared.append(r | {"time_vs_lora": time_ratio if base else None,
                             "gib_over_lora": r["peak_allocated_gib"] - base["peak_allocated_gib"] if memory else None})
    return compared