"""Shared test helpers: a tiny random-initialised Gemma 3 with the real Gemma 3 tokenizer."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lib.data import Record  # noqa: E402
from lib.model import load_tokenizer, resolve_model  # noqa: E402
from lib.precision import resolve_compute_dtype  # noqa: E402

# The compute dtype the course picks on this machine (lib.precision): tests train in it, so that a
# CPU without native bfloat16 runs them in float32 instead of emulated bfloat16.
COMPUTE_DTYPE = resolve_compute_dtype()


def make_tiny_gemma(folder: Path) -> Path:
    """Save a 2-layer, 64-wide Gemma 3 (random weights, real vocabulary and tokenizer) to `folder`."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    if (folder / "config.json").exists():
        return folder
    tokenizer = load_tokenizer(resolve_model("gemma-3-270m"))
    torch.manual_seed(0)
    config = Gemma3TextConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=32, sliding_window=64,
                              layer_types=["sliding_attention", "full_attention"], max_position_embeddings=1024)
    model = Gemma3ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    from lib.model import write_sentencepiece_model

    write_sentencepiece_model(resolve_model("gemma-3-270m"), folder)  # for llama.cpp's converter
    return folder


def make_tiny_gemma_with_system_prompt(folder: Path, prompt: str = "You write careful, tested Python.") -> Path:
    """The tiny Gemma of `make_tiny_gemma` whose chat template opens every conversation with a fixed
    system turn, as many instruct checkpoints' templates do: the same vocabulary, longer records."""
    import shutil

    from transformers import AutoTokenizer

    if (folder / "config.json").exists():
        return folder
    shutil.copytree(make_tiny_gemma(folder.with_name(folder.name + "-base")), folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    opening = "{{ bos_token }}"
    assert tokenizer.chat_template.startswith(opening), "Gemma 3's template no longer opens with the BOS token"
    tokenizer.chat_template = tokenizer.chat_template.replace(
        opening, opening + f"<start_of_turn>system\n{prompt}<end_of_turn>\n", 1)
    tokenizer.save_pretrained(folder)
    return folder


def code_records(n: int) -> list[Record]:
    """n short, distinct code conversations."""
    return [Record([{"role": "user", "content": f"Write add_{i}(x) returning x plus {i}."},
                    {"role": "assistant", "content": f"def add_{i}(x):\n    return x + {i}"}], "mem", i + 1,
                   {"function": f"add_{i}"}) for i in range(n)]


def parameters_cell(source: Path):
    """(the parameters cell's source, the code cells after it) of a py:percent chapter."""
    import jupytext

    cells = jupytext.read(source).cells
    index = next(i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", []))
    return cells[index].source, [c.source for c in cells[index + 1:] if c.cell_type == "code"]


def tiny_run(source, **changes):
    """A run spec for the tiny Gemma at `source` (a ModelSource): peft, 128 tokens, batch 2, no
    warm-up, no sampling; `changes` as `RunSpec.replace` takes them."""
    from lib.run_spec import RunSpec

    return RunSpec.of(source.path_or_id, **({"backend": "peft", "max_seq_length": 128, "batch_size": 2,
                                             "warmup_steps": 0, "sample_every": 0} | changes))


# What the libraries print on import that a chapter must not show: torchao's notes on CUDA kernels a
# CPU cannot load, torch's deprecation of torchao's Enum registrations, bitsandbytes' missing hub kernel.
LIBRARY_NOTES = ("Failed to load", "Enum subclass", "kernels-community")


@contextmanager
def stderr_into(path: Path):
    """Point file descriptor 2, which child processes inherit, at `path` while the block runs."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "w") as file:
        os.dup2(file.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
