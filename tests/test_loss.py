"""The chunked response-only loss (lib.loss) against the model's own loss: same value, same
gradients; in training and in evaluation."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from helpers import code_records
from lib.evaluation import response_loss
from lib.loss import causal_lm_parts, chunked_cross_entropy, response_only_loss


def batch(vocab: int):
    torch.manual_seed(0)
    ids = torch.randint(0, vocab, (3, 20))
    labels = ids.clone()
    labels[:, :8] = -100          # the prompt
    labels[2, 15:] = -100         # padding
    attention = torch.ones_like(ids)
    attention[2, 15:] = 0
    return {"input_ids": ids, "attention_mask": attention, "labels": labels}


@pytest.mark.parametrize("softcap", [None, 30.0])
@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_same_loss_and_gradients_as_the_model(tiny_source, softcap, chunk):
    model = AutoModelForCausalLM.from_pretrained(tiny_source.path_or_id, dtype=torch.float32)
    model.config.final_logit_softcapping = softcap
    inputs = batch(1000)
    reference = model(**inputs).loss
    reference.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    loss = response_only_loss(model, inputs, chunk_tokens=chunk)
    loss.backward()
    assert loss.item() == pytest.approx(reference.item(), rel=1e-5)
    for name, param in model.named_parameters():
        if name in expected and expected[name].norm() > 0:
            # float32 summation order differs (one row per chunk at chunk=1): ~1e-5; a wrong shift is O(1)
            assert (param.grad - expected[name]).norm() / expected[name].norm() < 1e-4, name


def test_divides_by_the_trainers_count_and_refuses_bad_arguments(tiny_source):
    model = AutoModelForCausalLM.from_pretrained(tiny_source.path_or_id, dtype=torch.float32)
    inputs = batch(1000)
    labelled = int((inputs["labels"][:, 1:] != -100).sum())
    mean = response_only_loss(model, inputs, 8)
    assert response_only_loss(model, inputs, 8, num_items=2 * labelled).item() == pytest.approx(mean.item() / 2)
    hidden = torch.zeros(2, 5, 4)
    with pytest.raises(ValueError, match="chunk_tokens"):
        chunked_cross_entropy(hidden, torch.zeros(2, 5, dtype=torch.long), torch.zeros(9, 4), 0)
    with pytest.raises(ValueError, match="disagree"):
        chunked_cross_entropy(hidden, torch.zeros(2, 4, dtype=torch.long), torch.zeros(9, 4), 4)


def test_a_vision_language_model_keeps_its_own_loss():
    from transformers import Gemma3ForConditionalGeneration

    assert causal_lm_parts(torch.nn.Linear(2, 2)) is None
    assert causal_lm_parts(Gemma3ForConditionalGeneration.__new__(Gemma3ForConditionalGeneration)) is None


def test_evaluation_loss_equals_the_full_logits_loss(tiny_source, tokenizer):
    model = AutoModelForCausalLM.from_pretrained(tiny_source.path_or_id, dtype=torch.float32).eval()
    records = code_records(5)
    chunked = response_loss(model, tokenizer, records, batch_size=2, chunk_tokens=3)
    from lib.data import response_labels, tokenize_conversation

    total, count = 0.0, 0
    for record in records:
        tokens = tokenize_conversation(tokenizer, record.messages)
        ids, labels = torch.tensor([tokens["input_ids"]]), torch.tensor([response_labels(tokens)])
        with torch.no_grad():
            n = int((labels[:, 1:] != -100).sum())
            total += model(input_ids=ids, labels=labels).loss.item() * n
            count += n
    assert chunked["tokens"] == count and chunked["loss"] == pytest.approx(total / count, rel=1e-5)
