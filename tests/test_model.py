from pathlib import Path

import pytest
import torch

from helpers import ROOT, tiny_run
from lib.model import ModelNotFoundError, gemma3_chat_template, resolve_model
from lib.training import load_for_training


def test_tokenizer_matches_gemma3_vocabulary(tokenizer):
    assert tokenizer.convert_tokens_to_ids(["<start_of_turn>", "<end_of_turn>", "\n"]) == [105, 106, 107]
    assert tokenizer.bos_token_id == 2 and tokenizer.eos_token_id == 1 and tokenizer.pad_token_id == 0
    pieces = tokenizer.convert_ids_to_tokens(tokenizer("def f(x):\n    return x")["input_ids"])
    assert pieces == ["<bos>", "def", "\u2581f", "(", "x", "):", "\n", "\u2581\u2581\u2581\u2581", "return", "\u2581x"]


def test_tokenizer_round_trips_real_code(tokenizer):
    source = (ROOT / "lib" / "data.py").read_text()
    ids = tokenizer(source, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == source
    assert len(ids) < len(source) / 2.5  # merges work: far fewer tokens than characters


def test_official_chat_template(tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"}]
    assert tokenizer.chat_template == gemma3_chat_template()
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert text == ("<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
                    "<start_of_turn>model\nHello<end_of_turn>\n")


def test_unknown_model_says_what_was_tried(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as err:
        resolve_model("no-such-org/no-such-model")
    message = str(err.value)
    assert "embedded models ['gemma-3-270m']" in message
    assert "local folder no-such-org/no-such-model: does not exist" in message
    assert "Hugging Face Hub id 'no-such-org/no-such-model'" in message
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="has no config.json"):
        resolve_model(str(tmp_path / "empty"))


def test_local_folder_resolves(tiny_source):
    assert resolve_model(tiny_source.path_or_id).kind == "local"


def test_dora_eval_matches_train_mode_on_cpu(tiny_source):
    """Regression: bitsandbytes' CPU repacking in eval mode broke peft DoRA's weight norm."""
    model, tokenizer = load_for_training(tiny_run(tiny_source, rank=8))
    ids = tokenizer("def add(a, b):\n    return a + b", return_tensors="pt")["input_ids"]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    with torch.no_grad():
        train_mode = model(input_ids=ids, labels=ids).loss.item()
        model.eval()
        eval_mode = model(input_ids=ids, labels=ids).loss.item()
    assert eval_mode == pytest.approx(train_mode, rel=1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dense_4bit_weights_give_the_same_outputs_and_go_away_after(tiny_source, dtype):
    """The dense copies hold what bitsandbytes' CPU forward computes: logits equal bit for bit."""
    import bitsandbytes as bnb

    from lib.model import dense_4bit_weights_on_cpu, load_causal_lm

    model = load_causal_lm(tiny_source, dtype)
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    ids = torch.randint(0, 5000, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model(input_ids=ids).logits
        with dense_4bit_weights_on_cpu(model) as switched:
            with dense_4bit_weights_on_cpu(model) as nested:  # the enclosing copies serve; none made twice
                dense = model(input_ids=ids).logits
            assert all("forward" in vars(layer) for layer in layers)
        after = model(input_ids=ids).logits
    assert switched == len(layers) > 0 and nested == 0
    assert torch.equal(dense, reference) and torch.equal(after, reference)
    assert not any("forward" in vars(layer) for layer in layers)  # Linear4bit.forward is back


def test_the_converted_model_keeps_tokenizer_model_so_a_copy_exports_offline(tmp_path):
    """llama.cpp's converter needs tokenizer.model; the embedded model's folder keeps it (rebuilt
    from the GGUF), so another path to the same weights exports without the hub."""
    from lib.model import ModelSource, resolve_model, write_sentencepiece_model

    source = resolve_model("gemma-3-270m")
    kept = Path(source.path_or_id) / "tokenizer.model"
    link = tmp_path / "linked-model"
    link.symlink_to(source.path_or_id)
    copied = write_sentencepiece_model(resolve_model(str(link)), tmp_path / "export")
    assert copied.read_bytes() == kept.read_bytes()
    # the same bytes as rebuilt from the GGUF's tokenizer fields, where no folder has the file
    rebuilt = write_sentencepiece_model(ModelSource("gemma-3-270m", str(tmp_path / "none"), "embedded"),
                                        tmp_path / "rebuilt")
    assert rebuilt.read_bytes() == kept.read_bytes()
