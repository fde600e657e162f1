"""Export a fine-tuned Gemma 3 with no network: LoRA adapter, merged 16-bit model, GGUF, Ollama.

* adapter: peft's format (adapter_config.json + adapter_model.safetensors), as training saved it;
* merged: the base in 16 bits with the adapter folded in (`merge_and_unload`), plain transformers;
* GGUF: llama.cpp's `convert_hf_to_gguf.py` (f16), then llama.cpp's quantizer (q8_0, q4_k_m),
  both from the llama.cpp sources that the llama-cpp-python sdist vendors. `tools/install.sh`
  builds llama-cpp-python from that sdist and unpacks the converter into the cache
  (`llama_cpp_sources`), so nothing here downloads or compiles;
* Ollama: a Modelfile whose TEMPLATE renders Gemma 3's turns like the tokenizer's chat template.

Every artifact is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .artifacts import replace_folder
from .model import DEFAULT_CACHE, ModelSource, write_added_tokens, write_sentencepiece_model

LLAMA_CPP_PYTHON = "0.3.36"  # the llama-cpp-python release whose vendored llama.cpp converts
GGUF_TYPES = ("f16", "q8_0", "q4_k_m")
CONVERTER_FILES = ("convert_hf_to_gguf.py", "conversion", "gguf-py", "LICENSE")


class GGUFError(ValueError):
    """A file that is not a complete, readable GGUF model."""


# ------------------------------------------------------------------ llama.cpp sources

def llama_cpp_sources(cache_dir: str | Path = DEFAULT_CACHE) -> Path:
    """The unpacked llama.cpp converter (convert_hf_to_gguf.py, conversion/, gguf-py/).

    Raises FileNotFoundError saying how to unpack it when `tools/install.sh` has not run.
    """
    folder = Path(cache_dir) / f"llama.cpp-{LLAMA_CPP_PYTHON}"
    if not (folder / "convert_hf_to_gguf.py").exists():
        raise FileNotFoundError(f"{folder} holds no llama.cpp converter: run tools/install.sh, or "
                                f"`python -m lib.export unpack SDIST` with llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz")
    return folder


def unpack_llama_cpp(sdist: str | Path, cache_dir: str | Path = DEFAULT_CACHE) -> Path:
    """Unpack the converter files of the sdist's vendored llama.cpp into the cache (once)."""
    import tarfile

    target = Path(cache_dir) / f"llama.cpp-{LLAMA_CPP_PYTHON}"
    if (target / "convert_hf_to_gguf.py").exists():
        return target
    prefix = f"llama_cpp_python-{LLAMA_CPP_PYTHON}/vendor/llama.cpp/"
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".llama.cpp-", dir=target.parent))
    try:
        with tarfile.open(sdist) as archive:
            members = [m for m in archive.getmembers() if m.name.startswith(prefix)
                       and m.name[len(prefix):].split("/")[0] in CONVERTER_FILES]
            if not members:
                raise FileNotFoundError(f"{sdist}: no {prefix}convert_hf_to_gguf.py inside")
            for member in members:
                member.name = member.name[len(prefix):]
                archive.extract(member, staging, filter="data")
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


# ------------------------------------------------------------------ adapter and merged model

def _staging_for(target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))


def export_adapter(adapter_dir: str | Path, target: str | Path) -> Path:
    """Copy a peft adapter folder to `target`; raises FileNotFoundError if it is not an adapter."""
    adapter_dir, target = Path(adapter_dir), Path(target)
    missing = [name for name in ("adapter_config.json", "adapter_model.safetensors")
               if not (adapter_dir / name).exists()]
    if missing:
        raise FileNotFoundError(f"{adapter_dir} is not a peft adapter: missing {', '.join(missing)}")
    staging = _staging_for(target)
    try:
        shutil.copytree(adapter_dir, staging, dirs_exist_ok=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return replace_folder(staging, target)


def merge_adapter(source: ModelSource, adapter_dir: str | Path, target: str | Path, dtype=None,
                  base: str = "nf4") -> Path:
    """Fold the adapter into a 16-bit copy of the base and save it (safetensors) with its tokenizer.

    The files are written in `dtype` (bf16 by default). The merge itself runs in float32 on a CPU
    (exact, and fast on every CPU, where bfloat16 arithmetic may be emulated: `lib.precision`) and
    in `dtype` on a GPU, where a float32 copy of a large model may not fit. base="nf4" (default)
    merges into the NF4
    weights the adapter was trained against, dequantized: W' = dequant(NF4(W)) + s B A, the model
    training produced, as
    unsloth's merged export does. base="original" merges into the unquantized checkpoint, W + s B A:
    an adapter trained to correct NF4's rounding then meets weights without it; chapter 07
    measures the difference. Raises ValueError for another `base`.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from .model import load_causal_lm, load_tokenizer
    from .precision import default_device

    if base not in ("nf4", "original"):
        raise ValueError(f"base must be 'nf4' or 'original', got {base!r}")
    target = Path(target)
    dtype = dtype or torch.bfloat16
    compute = torch.float32 if default_device() == "cpu" else dtype
    if base == "nf4":
        weights = load_causal_lm(source, compute, load_in_4bit=True).dequantize()
    else:
        weights = AutoModelForCausalLM.from_pretrained(source.path_or_id, dtype=compute)
    merged = PeftModel.from_pretrained(weights, str(adapter_dir)).merge_and_unload().to(dtype)
    staging = _staging_for(target)
    try:
        merged.save_pretrained(staging)
        tokenizer = load_tokenizer(source)
        tokenizer.save_pretrained(staging)
        write_added_tokens(tokenizer, staging)
        write_sentencepiece_model(source, staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return replace_folder(staging, target)


# ------------------------------------------------------------------ GGUF

@contextlib.contextmanager
def captured_native_output(log: list[str]):
    """Collect llama.cpp's messages into `log` (one entry per line) instead of the notebook.

    They take two roads: llama.cpp's log callback (per-tensor quantization progress, fallback
    warnings, loader notes), which llama-cpp-python otherwise prints from Python, and plain
    writes to file descriptors 1 and 2 from C code.
    """
    import ctypes

    llama_cpp = _llama_cpp()
    from llama_cpp import _logger

    chunks: list[str] = []

    @llama_cpp.llama_log_callback
    def collect(level, text, user_data):
        chunks.append(text.decode("utf-8", errors="replace"))

    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    llama_cpp.llama_log_set(collect, ctypes.c_void_p(0))
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield log
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
            sink.seek(0)
            log.extend("".join(chunks).splitlines())
            log.extend(sink.read().decode("utf-8", errors="replace").splitlines())


def _llama_cpp():
    """llama_cpp, with llama.cpp's own log (per-tensor progress, loader dumps) at errors only."""
    import llama_cpp
    from llama_cpp import _logger

    _logger.set_verbose(False)
    return llama_cpp


def _partial(path: Path) -> Path:
    return path.with_name(f".{path.name}.partial")


def convert_to_gguf(merged_dir: str | Path, target: str | Path, cache_dir: str | Path = DEFAULT_CACHE) -> Path:
    """merged model folder -> f16 GGUF with llama.cpp's convert_hf_to_gguf.py (no network).

    Raises RuntimeError with the converter's last output lines if it fails.
    """
    sources = llama_cpp_sources(cache_dir)
    target = Path(target)
    partial = _partial(target)
    env = os.environ | {"PYTHONPATH": f"{sources / 'gguf-py'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
                        "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, str(sources / "convert_hf_to_gguf.py"), str(merged_dir),
                          "--outfile", str(partial), "--outtype", "f16"], env=env, capture_output=True, text=True)
    if run.returncode != 0:
        partial.unlink(missing_ok=True)
        tail = "\n".join((run.stdout + run.stderr).splitlines()[-15:])
        raise RuntimeError(f"convert_hf_to_gguf.py failed on {merged_dir} (exit {run.returncode}):\n{tail}")
    os.replace(partial, target)
    return target


def quantize_gguf(f16_path: str | Path, target: str | Path, kind: str, threads: int | None = None,
                  log_path: str | Path | None = None) -> Path:
    """Quantize an f16 GGUF to `kind` ("q8_0" or "q4_k_m") with llama.cpp's quantizer.

    llama.cpp's output (one line per tensor, fallback warnings) goes to `log_path` if given. Raises ValueError for another kind, RuntimeError when llama.cpp reports a failure.
    """
    llama_cpp = _llama_cpp()
    ftypes = {"q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0, "q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M}
    if kind not in ftypes:
        raise ValueError(f"unknown quantization {kind!r}: use one of {sorted(ftypes)}")
    check_gguf(f16_path)
    target = Path(target)
    partial = _partial(target)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftypes[kind]
    params.nthread = threads or os.cpu_count() or 1
    log: list[str] = []
    with captured_native_output(log):
        code = llama_cpp.llama_model_quantize(str(f16_path).encode(), str(partial).encode(), params)
    if log_path:
        from .artifacts import atomic_write_text

        atomic_write_text(log_path, "\n".join(log) + "\n")
    if code != 0:
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"llama.cpp could not quantize {f16_path} to {kind} (code {code}):\n" + "\n".join(log[-10:]))
    os.replace(partial, target)
    return target


def _gguf_api():
    """llama.cpp's own GGUF reader (ggml's gguf.h, in the libggml-base that llama-cpp-python ships),
    through ctypes. gguf-py's GGUFReader builds a numpy view per array element: 13-25 s to index a
    Gemma 3 file, whose vocabulary is 262,144 strings; this reads the same index in well under one."""
    import ctypes

    class InitParams(ctypes.Structure):  # struct gguf_init_params
        _fields_ = [("no_alloc", ctypes.c_bool), ("ctx", ctypes.c_void_p)]

    lib = ctypes.CDLL(str(Path(_llama_cpp().__file__).parent / "lib" / "libggml-base.so"))
    context, tensor = ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_int64]
    for name, restype, argtypes in [
            ("gguf_init_from_file", context, [ctypes.c_char_p, InitParams]), ("gguf_free", None, [context]),
            ("gguf_get_n_tensors", ctypes.c_int64, [context]), ("gguf_get_data_offset", ctypes.c_size_t, [context]),
            ("gguf_find_key", ctypes.c_int64, [context, ctypes.c_char_p]),
            ("gguf_get_val_str", ctypes.c_char_p, tensor), ("gguf_get_tensor_offset", ctypes.c_size_t, tensor),
            ("gguf_get_tensor_size", ctypes.c_size_t, tensor),
            ("gguf_get_tensor_ne", ctypes.POINTER(ctypes.c_int64), tensor)]:
        function = getattr(lib, name)
        function.restype, function.argtypes = restype, argtypes
    return lib, InitParams(no_alloc=True, ctx=None)


GGML_MAX_DIMS = 4  # gguf_get_tensor_ne's array length (ggml.h)


def check_gguf(path: str | Path) -> dict:
    """Read a GGUF's header and tensor index with llama.cpp's reader; {architecture, tensors,
    parameters, bytes}.

    Raises GGUFError naming the file and what is wrong: missing, not GGUF (bad magic),
    truncated (tensor data past the end of the file), or unreadable (with llama.cpp's reason).
    """
    path = Path(path)
    if not path.is_file():
        raise GGUFError(f"{path}: no such file")
    size = path.stat().st_size
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic != b"GGUF":
        raise GGUFError(f"{path}: not a GGUF file (starts with {magic!r}, expected b'GGUF')")
    lib, params = _gguf_api()
    log: list[str] = []
    with captured_native_output(log):
        context = lib.gguf_init_from_file(str(path).encode(), params)
    if not context:
        reason = " ".join(line.strip() for line in log[-3:]) or "no reason given"
        raise GGUFError(f"{path}: unreadable or truncated GGUF header (llama.cpp: {reason})")
    try:
        tensors = range(lib.gguf_get_n_tensors(context))
        data_offset = lib.gguf_get_data_offset(context)
        end = max((data_offset + lib.gguf_get_tensor_offset(context, i) + lib.gguf_get_tensor_size(context, i)
                   for i in tensors), default=0)
        parameters = sum(math.prod(lib.gguf_get_tensor_ne(context, i)[:GGML_MAX_DIMS]) for i in tensors)
        key = lib.gguf_find_key(context, b"general.architecture")
        architecture = lib.gguf_get_val_str(context, key).decode() if key >= 0 else None
    finally:
        lib.gguf_free(context)
    if end > size:
        raise GGUFError(f"{path}: truncated: the file ({size:,} bytes) ends inside the tensor data "
                        f"(it ends at byte {end:,})")
    return {"architecture": architecture, "tensors": len(tensors), "parameters": parameters, "bytes": size}


def load_gguf(path: str | Path, n_ctx: int = 1024, logits_all: bool = False):
    """(llama_cpp.Llama, load seconds) after `check_gguf`; raises GGUFError for a bad file."""
    check_gguf(path)
    Llama = _llama_cpp().Llama
    started = time.perf_counter()
    log: list[str] = []
    try:
        with captured_native_output(log):  # llama.cpp notes on its KV cache layout, not for the reader
            llm = Llama(model_path=str(path), n_ctx=n_ctx, n_threads=os.cpu_count(), logits_all=logits_all,
                        verbose=False)
    except ValueError as err:
        raise GGUFError(f"{path}: llama.cpp could not load it ({err}; {' '.join(log[-3:])})") from err
    return llm, time.perf_counter() - started


# ------------------------------------------------------------------ running a GGUF

def gguf_response_loss(llm, tokenizer, records) -> dict:
    """{'loss', 'perplexity', 'tokens'} of a GGUF on `records`, as `lib.evaluation.response_loss`:
    mean cross-entropy over assistant tokens, same tokenization. `llm` needs logits_all=True."""
    import math

    import numpy as np

    from .data import tokenize_conversation

    total, count = 0.0, 0
    for record in records:
        encoded = tokenize_conversation(tokenizer, record.messages)
        ids, mask = encoded["input_ids"], encoded["assistant_masks"]
        if len(ids) > llm.n_ctx():
            raise ValueError(f"{record.file}:{record.line}: {len(ids)} tokens > the GGUF context {llm.n_ctx()}")
        llm.reset()
        llm.eval(ids)
        # row t of the scores predicts token t + 1; only the assistant positions are read, and only
        # they are widened to float64 (a 262k-wide row per prompt token was most of the time)
        kept = np.flatnonzero(np.array(mask[1:], dtype=bool))
        rows = llm.scores[kept].astype(np.float64)
        top = rows.max(axis=1)
        log_norm = np.log(np.exp(rows - top[:, None]).sum(axis=1)) + top
        total += float((log_norm - rows[np.arange(len(kept)), np.array(ids[1:])[kept]]).sum())
        count += len(kept)
    loss = total / count
    return {"loss": loss, "perplexity": math.exp(loss), "tokens": count}


def gguf_generate(llm, tokenizer, prompts: list[list[dict]], max_new_tokens: int) -> tuple[list, dict]:
    """Greedy completions of chat prompts with a GGUF, stopping at <end_of_turn>, as
    `lib.evaluation.Generation`s, and timings: {'seconds_per_response', 'tokens_per_second'}
    (generated tokens over generation wall time)."""
    from .evaluation import Generation

    texts, seconds, generated = [], 0.0, 0
    for prompt in prompts:
        ids = tokenizer.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True, return_dict=True)[
            "input_ids"]
        llm.reset()
        started = time.perf_counter()
        out = llm.create_completion(ids, max_tokens=max_new_tokens, temperature=0.0, top_k=1,
                                    stop=["<end_of_turn>"])
        seconds += time.perf_counter() - started
        choice, tokens = out["choices"][0], out["usage"]["completion_tokens"]
        texts.append(Generation(choice["text"], choice.get("finish_reason") == "stop", tokens))
        generated += tokens
    return texts, {"seconds_per_response": seconds / len(prompts), "tokens_per_second": generated / seconds}


def evaluate_gguf(path: str | Path, tokenizer, records, generate_n: int, max_new_tokens: int,
                  n_ctx: int = 1024) -> tuple[dict, list[dict]]:
    """Loss/perplexity on `records`, code metrics on the first `generate_n`, size and speed."""
    from .evaluation import code_metrics, generation_subset

    llm, load_seconds = load_gguf(path, n_ctx=n_ctx, logits_all=True)
    try:
        metrics = gguf_response_loss(llm, tokenizer, records)
        subset = generation_subset(records, generate_n)
        generations, speed = gguf_generate(llm, tokenizer, [r.prompt_messages for r in subset], max_new_tokens)
        context = llm.n_ctx()  # the context llama.cpp allocated
    finally:
        llm.close()
    code, rows = code_metrics(generations, subset)
    return metrics | code | speed | {"load_seconds": load_seconds, "file_mib": Path(path).stat().st_size / 2**20,
                                     "n_ctx": context}, rows


def evaluate_merged(folder: str | Path, tokenizer, records, generate_n: int, max_new_tokens: int,
                    batch_size: int, dtype) -> tuple[dict, list[dict]]:
    """`evaluate_gguf`'s measurements for a merged safetensors folder, loaded with transformers alone
    in `dtype`: lib.evaluation.evaluate_model's metrics plus load_seconds and file_mib (the
    safetensors files). Raises ValueError if the folder still holds LoRA modules (not merged)."""
    from transformers import AutoModelForCausalLM

    from .evaluation import evaluate_model

    started = time.perf_counter()
    merged = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    load_seconds = time.perf_counter() - started
    if any("lora" in name for name, _ in merged.named_modules()):
        raise ValueError(f"{folder}: the model still has LoRA modules; merge_adapter writes a plain model")
    metrics, rows = evaluate_model(merged, tokenizer, records, generate_n, max_new_tokens, batch_size)
    size = sum(f.stat().st_size for f in Path(folder).glob("*.safetensors")) / 2**20
    return metrics | {"load_seconds": load_seconds, "file_mib": size,
                      "compute_dtype": str(merged.dtype).removeprefix("torch.")}, rows


# ------------------------------------------------------------------ Ollama

# Go text/template, as Ollama renders it: Gemma 3's turns as the official chat template writes them
# (a leading system message is prefixed to the first user turn), ending with the model's header.
# Ollama adds <bos> itself (the GGUF says add_bos_token), so the template starts at the first turn.
OLLAMA_TEMPLATE = """{{- $system := "" }}{{- $first := true }}
{{- range $i, $m := .Messages }}
{{- if and (eq $i 0) (eq $m.Role "system") }}{{ $system = $m.Content }}
{{- else }}<start_of_turn>{{ if eq $m.Role "assistant" }}model{{ else }}{{ $m.Role }}{{ end }}
{{ if $first }}{{ if $system }}{{ $system }}

{{ end }}{{ $first = false }}{{ end }}{{ $m.Content }}<end_of_turn>
{{ end }}
{{- end }}<start_of_turn>model
"""


def write_modelfile(gguf_path: str | Path, temperature: float = 1.0, top_k: int = 64, top_p: float = 0.95,
                    num_ctx: int = 2048) -> Path:
    """Write `Modelfile` next to the GGUF: FROM, TEMPLATE, stop at <end_of_turn>, sampling.

    Sampling defaults are Gemma 3's recommended ones (temperature 1.0, top_k 64, top_p 0.95).
    """
    from .artifacts import atomic_write_text

    gguf_path = Path(gguf_path)
    text = (f"FROM ./{gguf_path.name}\n\n"
            f'TEMPLATE """{OLLAMA_TEMPLATE}"""\n\n'
            "PARAMETER stop <end_of_turn>\n"
            f"PARAMETER temperature {temperature}\nPARAMETER top_k {top_k}\nPARAMETER top_p {top_p}\n"
            f"PARAMETER num_ctx {num_ctx}\n")
    return atomic_write_text(gguf_path.parent / "Modelfile", text)


def modelfile_template(path: str | Path) -> str:
    """The TEMPLATE of a Modelfile. Raises ValueError if it has none."""
    import re

    match = re.search(r'^TEMPLATE """(.*?)"""', Path(path).read_text(encoding="utf-8"), re.DOTALL | re.MULTILINE)
    if not match:
        raise ValueError(f"{path}: no TEMPLATE \"\"\"...\"\"\" block")
    return match.group(1)


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="llama.cpp converter sources for lib.export")
    sub = parser.add_subparsers(dest="command", required=True)
    unpack = sub.add_parser("unpack", help="unpack the converter from a llama-cpp-python sdist into the cache")
    unpack.add_argument("sdist", type=Path)
    args = parser.parse_args(argv)
    print(unpack_llama_cpp(args.sdist))
    return 0


if __name__ == "__main__":
    sys.exit(main())
