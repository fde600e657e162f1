import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import code_records
from lib.export import (GGUFError, LLAMA_CPP_PYTHON, check_gguf, convert_to_gguf, evaluate_merged, export_adapter,
                        gguf_response_loss,
                        load_gguf, merge_adapter, modelfile_template, quantize_gguf,
                        unpack_llama_cpp, write_modelfile)
from lib.lora import TrinityConfig

GO_RENDERER = Path(__file__).parent / "go" / "render_template.go"

CONVERSATIONS = [
    [{"role": "user", "content": "Write add(a, b)."}],
    [{"role": "system", "content": "You write Python."}, {"role": "user", "content": "Write add(a, b)."}],
    [{"role": "user", "content": "Write add(a, b)."}, {"role": "assistant", "content": "def add(a, b):\n    return a + b"},
     {"role": "user", "content": "Now sub(a, b), with a docstring."}],
]


def render_with_go(template: str, messages: list[dict], tmp_path: Path) -> str:
    """Ollama's engine: Go's text/template, run on the Modelfile's TEMPLATE."""
    run = subprocess.run(["go", "run", str(GO_RENDERER)], input=json.dumps({"template": template, "messages": messages}),
                         capture_output=True, text=True, cwd=tmp_path, env={"GOCACHE": str(tmp_path / "gocache"),
                         "HOME": str(tmp_path), "PATH": "/usr/bin:/bin:/usr/local/bin", "GO111MODULE": "off"})
    assert run.returncode == 0, run.stderr
    return run.stdout


@pytest.mark.parametrize("messages", CONVERSATIONS, ids=["user", "system+user", "multi-turn"])
def test_modelfile_template_renders_prompts_identical_to_the_chat_template(tokenizer, tmp_path, messages):
    modelfile = write_modelfile(tmp_path / "model-q4_k_m.gguf")
    text = modelfile.read_text()
    assert text.startswith("FROM ./model-q4_k_m.gguf\n") and "PARAMETER stop <end_of_turn>" in text
    rendered = render_with_go(modelfile_template(modelfile), messages, tmp_path)
    expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    # Ollama adds <bos> as a token (the GGUF's add_bos_token); the chat template writes it as text.
    assert expected.startswith("<bos>")
    assert rendered == expected.removeprefix("<bos>")


def test_modelfile_without_template_is_rejected(tmp_path):
    (tmp_path / "Modelfile").write_text("FROM ./x.gguf\n")
    with pytest.raises(ValueError, match="no TEMPLATE"):
        modelfile_template(tmp_path / "Modelfile")


@pytest.fixture(scope="module")
def trained_adapter(tiny_source, tmp_path_factory):
    """A tiny model with a DoRA adapter whose B is non-zero (as if trained), saved in peft format."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from lib.model import load_tokenizer
    from lib.training import save_adapter

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_source.path_or_id, dtype=torch.float32)
    model = get_peft_model(model, TrinityConfig(rank=4, use_dora=True).to_peft())
    for module in model.modules():
        if hasattr(module, "lora_B"):
            torch.nn.init.normal_(module.lora_B["default"].weight, std=0.5)
    folder = save_adapter(model, load_tokenizer(tiny_source), tmp_path_factory.mktemp("run") / "adapter")
    return model, folder


def test_exported_adapter_reloads_with_peft_and_answers_the_same(trained_adapter, tokenizer, tmp_path):
    from peft import AutoPeftModelForCausalLM

    from lib.evaluation import generate

    model, folder = trained_adapter
    exported = export_adapter(folder, tmp_path / "export" / "adapter")
    reloaded = AutoPeftModelForCausalLM.from_pretrained(str(exported), dtype=torch.float32)
    prompts = [r.prompt_messages for r in code_records(2)]
    assert generate(model.eval(), tokenizer, prompts, 12) == generate(reloaded.eval(), tokenizer, prompts, 12)


def test_export_adapter_refuses_a_folder_that_is_not_an_adapter(tmp_path):
    (tmp_path / "notes").mkdir()
    with pytest.raises(FileNotFoundError, match="missing adapter_config.json, adapter_model.safetensors"):
        export_adapter(tmp_path / "notes", tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_a_failed_export_keeps_the_previous_one_whole(trained_adapter, tmp_path, monkeypatch):
    _, folder = trained_adapter
    target = export_adapter(folder, tmp_path / "adapter")
    before = {p.name: p.read_bytes() for p in target.iterdir()}

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shutil, "copytree", disk_full)
    with pytest.raises(OSError, match="No space left"):
        export_adapter(folder, target)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # no partial folder left


@pytest.fixture(scope="module")
def merged_and_gguf(trained_adapter, tiny_source, tmp_path_factory):
    _, adapter = trained_adapter
    folder = tmp_path_factory.mktemp("export")
    merged = merge_adapter(tiny_source, adapter, folder / "merged", dtype=torch.float32, base="original")
    f16 = convert_to_gguf(merged, folder / "model-f16.gguf")
    return merged, f16


def test_merged_model_is_plain_transformers_and_equals_the_adapted_model(trained_adapter, merged_and_gguf):
    from transformers import AutoModelForCausalLM

    model, _ = trained_adapter
    merged = AutoModelForCausalLM.from_pretrained(merged_and_gguf[0], dtype=torch.float32)
    assert not any("lora" in name for name, _ in merged.named_modules())
    ids = torch.tensor([[2, 818, 5279, 529, 496, 1473]])
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, model(ids).logits, atol=1e-4, rtol=1e-4)


def test_nf4_merge_equals_the_adapter_on_the_nf4_base_it_was_trained_on(trained_adapter, tiny_source, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from lib.model import load_causal_lm

    _, adapter = trained_adapter
    merged_dir = merge_adapter(tiny_source, adapter, tmp_path / "merged", dtype=torch.float32)  # base="nf4"
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32)
    as_trained = PeftModel.from_pretrained(load_causal_lm(tiny_source, torch.float32, load_in_4bit=True), str(adapter))
    ids = torch.tensor([[2, 818, 5279, 529, 496, 1473]])
    with torch.no_grad():
        got, want = merged(ids).logits, as_trained(ids).logits
    assert torch.allclose(got, want, atol=2e-3, rtol=2e-3)
    with pytest.raises(ValueError, match="base must be 'nf4' or 'original'"):
        merge_adapter(tiny_source, adapter, tmp_path / "x", base="int8")


def test_evaluate_merged_scores_the_folder_and_refuses_an_unmerged_adapter(trained_adapter, merged_and_gguf, tokenizer):
    from transformers import AutoModelForCausalLM

    from lib.evaluation import response_loss

    records = code_records(3)
    metrics, rows = evaluate_merged(merged_and_gguf[0], tokenizer, records, 2, 8, 2, torch.float32)
    merged = AutoModelForCausalLM.from_pretrained(merged_and_gguf[0], dtype=torch.float32)
    assert metrics["loss"] == pytest.approx(response_loss(merged, tokenizer, records)["loss"], rel=1e-5)
    assert len(rows) == 2 and metrics["load_seconds"] > 0
    assert metrics["file_mib"] * 2**20 == sum(f.stat().st_size for f in merged_and_gguf[0].glob("*.safetensors"))
    with pytest.raises(ValueError, match="still has LoRA modules"):  # transformers loads an adapter folder with its base
        evaluate_merged(trained_adapter[1], tokenizer, records, 1, 8, 2, torch.float32)


def test_gguf_tokenizes_and_scores_like_transformers(merged_and_gguf, tokenizer):
    from transformers import AutoModelForCausalLM

    from lib.evaluation import response_loss

    merged_dir, f16 = merged_and_gguf
    info = check_gguf(f16)
    assert info["architecture"] == "gemma3" and info["bytes"] == f16.stat().st_size
    llm, _ = load_gguf(f16, n_ctx=256, logits_all=True)
    text = "def add(a, b):\n    return a + b  # <start_of_turn> naïve\t\tcafé"
    assert llm.tokenize(text.encode(), add_bos=True, special=True) == tokenizer(text)["input_ids"]
    records = code_records(3)
    ours = gguf_response_loss(llm, tokenizer, records)
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32)
    reference = response_loss(merged, tokenizer, records)
    assert ours["tokens"] == reference["tokens"]
    llm.close()
    assert ours["loss"] == pytest.approx(reference["loss"], rel=2e-2)  # f16 weights vs fp32


def test_q8_0_quantization_writes_a_smaller_loadable_file(merged_and_gguf, tmp_path):
    _, f16 = merged_and_gguf
    q8 = quantize_gguf(f16, tmp_path / "model-q8_0.gguf", "q8_0")
    assert check_gguf(q8)["bytes"] < check_gguf(f16)["bytes"]
    llm, seconds = load_gguf(q8, n_ctx=64)
    assert seconds > 0 and len(llm.tokenize(b"hello")) > 0
    llm.close()
    with pytest.raises(ValueError, match="unknown quantization 'q3'"):
        quantize_gguf(f16, tmp_path / "x.gguf", "q3")
    assert not (tmp_path / "x.gguf").exists()


def write_small_gguf(path: Path) -> Path:
    import gguf

    writer = gguf.GGUFWriter(str(path), "gemma3")
    writer.add_tensor("token_embd.weight", np.ones((32, 64), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_damaged_files_raise_a_clear_gguf_error(tmp_path):
    good = write_small_gguf(tmp_path / "good.gguf")
    assert check_gguf(good)["tensors"] == 1
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(GGUFError, match="truncated: the file .* ends inside the tensor data"):
        check_gguf(truncated)
    truncated.write_bytes(good.read_bytes()[:40])
    with pytest.raises(GGUFError, match="truncated GGUF header"):
        check_gguf(truncated)
    (tmp_path / "text.gguf").write_text("not a model")
    with pytest.raises(GGUFError, match="not a GGUF file"):
        load_gguf(tmp_path / "text.gguf")
    with pytest.raises(GGUFError, match="no such file"):
        check_gguf(tmp_path / "missing.gguf")


def test_unpack_takes_only_the_converter_from_an_sdist(tmp_path):
    prefix = f"llama_cpp_python-{LLAMA_CPP_PYTHON}/vendor/llama.cpp/"
    sdist = tmp_path / "fake.tar.gz"
    with tarfile.open(sdist, "w:gz") as archive:
        for name in ("convert_hf_to_gguf.py", "gguf-py/gguf/__init__.py", "src/llama.cpp", "../evil.py"):
            data = b"# x\n"
            info = tarfile.TarInfo(prefix + name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    target = unpack_llama_cpp(sdist, tmp_path / "cache")
    assert (target / "convert_hf_to_gguf.py").exists() and (target / "gguf-py" / "gguf" / "__init__.py").exists()
    assert not (target / "src").exists() and not (tmp_path / "cache" / "evil.py").exists()
    empty = tmp_path / "empty.tar.gz"
    with tarfile.open(empty, "w:gz"):
        pass
    with pytest.raises(FileNotFoundError, match="no .*convert_hf_to_gguf.py"):
        unpack_llama_cpp(empty, tmp_path / "cache2")
    assert not list((tmp_path / "cache2").glob("*"))
