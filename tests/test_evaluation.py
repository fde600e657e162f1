import pytest
import torch

from helpers import code_records
from lib.data import tokenize_conversation
from lib.data import Record
from lib.evaluation import (Generation, answers_html, chrf, code_metrics, defines_function, distinct_2, extract_code,
                            mcnemar_exact_p, parses, performance_gate, quantization_gate, repeats_a_line, response_loss,
                            unresolved_names)
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
    assert metrics["stopped_rate"] is None  # plain strings: whether they stopped is unknown


LOOP = "def add_1(x):\n" + "    if not x: x = x.replace('a', 'b')\n" * 5


def test_degenerate_and_invented_answers_are_not_clean():
    records = code_records(4)
    generations = [Generation("def add_0(x):\n    return x + 0", True, 12),       # clean
                   Generation(LOOP, False, 160),                                    # a loop to max_new_tokens
                   Generation("def add_2(x):\n    return _address(x)", True, 9),   # a helper that does not exist
                   Generation("def add_3(x):\n    return x + 3", False, 160)]      # did not stop
    metrics, rows = code_metrics(generations, records)
    assert [r["clean"] for r in rows] == [True, False, False, False]
    assert metrics["defines_function_rate"] == 100 and metrics["clean_rate"] == 25
    assert metrics["repeated_line_rate"] == 25 and metrics["stopped_rate"] == 50
    assert rows[2]["unresolved"] == ["_address"] and metrics["names_resolve_rate"] == 75
    assert repeats_a_line(LOOP) and not repeats_a_line("else:\n    pass\nelse:\n    pass\nelse:\n    pass")
    assert distinct_2("a b a b a b") == 2 / 5 and distinct_2("one") is None
    html = answers_html({"fine-tuned": rows})
    assert html.count("<details>") == 4 and "_address" in html and "&#x27;a&#x27;" in html  # escaped


def test_names_resolve_against_the_real_module():
    code = "import re\ndef f(x):\n    y = helper(x)\n    return [re.sub(a, 'b', y) for a in CONST] + [len(x)]"
    assert unresolved_names(code, "f") == ["CONST", "helper"]
    assert unresolved_names("def reach(h):\n    return is_HDN(h)", "reach", "http.cookiejar") == []
    assert unresolved_names("def reach(h):\n    return is_HDNN(h)", "reach", "http.cookiejar") == ["is_HDNN"]
    assert unresolved_names("def g(): pass", "f") is None and unresolved_names("def f(:", "f") is None
    assert unresolved_names("def f(): pass", "f", "no_such_module_anywhere") is None


def test_doctests_of_the_prompt_run_against_the_generated_function():
    prompt = "Write `def reach(h)` from `http.cookiejar`.\n\n>>> reach('www.acme.com')\n'.acme.com'\n"
    record = Record([{"role": "user", "content": prompt}, {"role": "assistant", "content": "..."}], "mem", 1,
                    {"function": "reach", "module": "http.cookiejar"})
    right = "def reach(h):\n    i = h.find('.')\n    return '.' + h[i + 1:] if i >= 0 else h"
    metrics, rows = code_metrics([right, "def reach(h):\n    return h", "x = 1"], [record] * 3)
    assert [r["doctest"] for r in rows] == ["passed", "failed", "error"]  # "error": reach is not defined
    assert metrics["doctest_examples"] == 3 and metrics["doctest_pass_rate"] == pytest.approx(100 / 3)


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


def test_performance_gate_needs_both_margins_and_significance():
    base = {"loss": 2.0, "clean_rate": 10.0}
    assert performance_gate(base, {"loss": 1.5, "clean_rate": 60.0}, 0.2, 25).passed
    assert not performance_gate(base, {"loss": 1.9, "clean_rate": 60.0}, 0.2, 25).passed
    assert not performance_gate(base, {"loss": 1.5, "clean_rate": 30.0}, 0.2, 25).passed
    no_task = performance_gate({"loss": 2.0, "clean_rate": None}, {"loss": 1.5, "clean_rate": None}, 0.2, 25)
    assert no_task.passed and "no clean_rate" in no_task.detail
    before, after = [{"clean": False}] * 8, [{"clean": True}] * 4 + [{"clean": False}] * 4  # +50 points, n=8
    small = performance_gate({"loss": 2.0, "clean_rate": 0.0}, {"loss": 1.5, "clean_rate": 50.0}, 0.2, 25,
                             base_rows=before, tuned_rows=after)
    assert not small.passed and "McNemar exact p = 0.12" in small.detail  # 4 of 4 one way: p = 2/16
    large = performance_gate({"loss": 2.0, "clean_rate": 0.0}, {"loss": 1.5, "clean_rate": 50.0}, 0.2, 25,
                             base_rows=before * 2, tuned_rows=after * 2)
    assert large.passed


def test_worked_examples_come_first_and_only_the_question_is_scored(tiny_source, tokenizer):
    from lib.evaluation import with_examples

    model = load_causal_lm(tiny_source, torch.float32, load_in_4bit=False).eval()
    question, shots = code_records(3)[2], code_records(2)
    asked = with_examples(question, shots)
    assert [m["role"] for m in asked.messages] == ["user", "assistant"] * 3
    assert asked.messages[-1] == question.messages[-1] and asked.prompt_messages[-1] == question.messages[0]
    scored = response_loss(model, tokenizer, [asked], last_turn_only=True)
    everything = response_loss(model, tokenizer, [asked])
    answer_tokens = len(tokenize_conversation(tokenizer, question.messages)["input_ids"]) - len(
        tokenizer.apply_chat_template(question.prompt_messages, tokenize=True, add_generation_prompt=True,
                                      return_dict=True)["input_ids"])
    assert scored["tokens"] == answer_tokens  # the question's answer, end-of-turn included
    assert everything["tokens"] > scored["tokens"]  # the examples' answers too, without last_turn_only


def rows(outcomes):
    return [{"clean": bool(x)} for x in outcomes]


def test_quantization_gate_needs_perplexity_within_5_percent_and_no_real_task_drop():
    reference, ref_rows = {"perplexity": 5.0}, rows([1] * 12 + [0] * 12)
    same = quantization_gate(reference, {"perplexity": 5.2}, "q8_0", ref_rows, ref_rows)
    assert same.passed and "+4.0%" in same.detail
    assert not quantization_gate(reference, {"perplexity": 5.4}, "q4_k_m", ref_rows, ref_rows).passed
    # two examples of 24 flip: 8% relative, but indistinguishable from noise at n=24
    noisy = quantization_gate(reference, {"perplexity": 5.0}, "q8_0", ref_rows, rows([1] * 10 + [0] * 14))
    assert noisy.passed and "not significant" in noisy.detail
    # every success lost: a real drop
    broken = quantization_gate(reference, {"perplexity": 5.0}, "q4_k_m", ref_rows, rows([0] * 24))
    assert not broken.passed and "significant" in broken.detail


def test_mcnemar_exact_p_values():
    assert mcnemar_exact_p(0, 0) == 1.0
    assert mcnemar_exact_p(2, 0) == 0.5  # 2 * (1/4)
    assert mcnemar_exact_p(12, 0) == pytest.approx(2 / 2**12)
    assert mcnemar_exact_p(3, 5) == mcnemar_exact_p(5, 3)


def test_load_finetuned_runs_the_course_dora_forward_with_peft_s_results(tiny_source, tokenizer, tmp_path):
    """The adapter a training run saves, loaded for evaluation with the fast DoRA forward and with
    peft's: the same loss (float32) and the same greedy answers."""
    from peft import get_peft_model

    from lib.evaluation import generate, load_finetuned
    from lib.fast_dora import fast_dora_layers
    from lib.lora import TrinityConfig

    trained = get_peft_model(load_causal_lm(tiny_source, torch.float32), TrinityConfig(rank=8).to_peft())
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # B away from zero, as after training: otherwise DoRA's terms vanish
        for name, p in trained.named_parameters():
            if "lora_B" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=generator))
    trained.save_pretrained(tmp_path / "adapter")
    records = code_records(3)
    prompts = [r.prompt_messages for r in records]
    results = {}
    for fast in (True, False):
        model = load_finetuned(tiny_source, tmp_path / "adapter", torch.float32, fast_dora=fast)
        assert bool(fast_dora_layers(model)) == fast
        results[fast] = response_loss(model, tokenizer, records)["loss"], generate(model, tokenizer, prompts, 12)
    assert results[True][0] == pytest.approx(results[False][0], rel=1e-5)
    assert results[True][1] == results[False][1]
