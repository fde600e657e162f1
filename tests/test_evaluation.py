import pytest
import torch

from helpers import code_records
from lib.data import tokenize_conversation
from lib.evaluation import (chrf, code_metrics, defines_function, extract_code, parses, performance_gate,
                            response_loss)
from lib.model import load_causal_lm


def test_extract_code_prefers_a_fenced_block():
    assert extract_code("Here:\n```python\ndef f():\n    return 1\n```\nDone") == "def f():\n    return 1"
    assert extract_code("def f():\n    return 1") == "def f():\n    return 1"


def test_parse_and_function_checks():
    assert parses("def f(x):\n    return x") and not parses("def f(x) return x")
    assert defines_function("class A:\n    def g(self):\n        pass", "g")
    assert not defines_function("def h(): pass", "g") and not defines_function("def g(:", "g")


def test_chrf_bounds():
    assert chrf(["def f(): return 1"], ["def f(): return 1"]) == pytest.approx(100)
    assert 0 < chrf(["def f(): return 2"], ["def f(): return 1"]) < 100


def test_code_metrics_rates():
    records = code_records(2)
    metrics, rows = code_metrics(["def add_0(x):\n    return x", "add_1 = lambda x: x +"], records)
    assert metrics["parse_rate"] == 50 and metrics["defines_function_rate"] == 50
    assert rows[1]["parses"] is False


def test_response_loss_matches_the_models_own_loss(tiny_source, tokenizer):
    model = load_causal_lm(tiny_source, torch.float32, load_in_4bit=False).eval()
    records = code_records(3)
    measured = response_loss(model, tokenizer, records, batch_size=2)
    total = count = 0
    for record in records:
        tokens = tokenize_conversation(tokenizer, record.messages)
        ids = torch.tensor([tokens["input_ids"]])
        labels = torch.tensor([[t if m else -100 for t, m in zip(tokens["input_ids"], tokens["assistant_masks"])]])
        n = int((labels[:, 1:] != -100).sum())
        with torch.no_grad():
            total += model(input_ids=ids, labels=labels).loss.item() * n
        count += n
    assert measured["tokens"] == count
    assert measured["loss"] == pytest.approx(total / count, rel=1e-4)


def test_performance_gate_needs_both_margins():
    base = {"loss": 2.0, "defines_function_rate": 10.0}
    assert performance_gate(base, {"loss": 1.5, "defines_function_rate": 60.0}, 0.2, 25).passed
    assert not performance_gate(base, {"loss": 1.9, "defines_function_rate": 60.0}, 0.2, 25).passed
    assert not performance_gate(base, {"loss": 1.5, "defines_function_rate": 30.0}, 0.2, 25).passed
    no_task = performance_gate({"loss": 2.0, "defines_function_rate": None},
                               {"loss": 1.5, "defines_function_rate": None}, 0.2, 25)
    assert no_task.passed and "no defines_function_rate" in no_task.detail
