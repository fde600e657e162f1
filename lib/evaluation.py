"""Evaluating base vs fine-tuned models on held-out conversations.

Metrics, per model:
* response loss: mean cross-entropy (nats/token) over the reference assistant tokens only, and
  perplexity = exp(loss) (teacher forcing, the same masking as training);
* on generations: share that parses as Python (`ast.parse`), share that defines the asked
  function name, chrF against the reference (Popović 2015, via sacrebleu's corpus_chrf), and what
  those miss, measured because a model that loops or invents helpers still "defines the function":
  - degeneration: share with a line repeated 3+ times, distinct-2 (distinct word bigrams over all
    bigrams, Li et al. 2016, arXiv:1510.03055), share that stop by themselves (end of turn) rather
    than at max_new_tokens;
  - names that resolve: every free name of the generated function is a parameter, a local, a
    builtin, defined by the generated code, or a global of the real module it was asked for
    (imported and looked at); a call to a helper that does not exist fails it;
  - doctests: where the prompt carries `>>>` examples, they run against the generated function in
    a limited subprocess (`lib.code_sandbox`);
  - clean: defines the function, its names resolve, no repeated line, and it stopped by itself.

Gates, stored next to the metrics so a pipeline can read them:
* baseline-established: the base model's metrics were measured and written to baseline.json;
* model-performance: the fine-tuned model beats the baseline by the stated margins;
* quantization-verified: an exported (GGUF) model stays within a stated margin of the merged
  16-bit model (chapter 07).
"""

from __future__ import annotations

import ast
import math
import re
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import torch

from .artifacts import write_json
from .data import Record, response_labels, tokenize_conversation
from .model import dense_4bit_weights_on_cpu


# ------------------------------------------------------------------ loading

def load_finetuned(source, adapter_dir: str | Path, compute_dtype: torch.dtype, load_in_4bit: bool = True,
                   fast_dora: bool = True):
    """The NF4 base with a saved adapter on top, in eval mode: the model as it was trained.

    `source` is a `lib.model.ModelSource`; raises FileNotFoundError if `adapter_dir` holds no
    adapter_config.json. `fast_dora`: DoRA layers run the course's DoRA forward
    (`lib.fast_dora`, what training ran; its norm is computed once, where peft's forward
    dequantizes the base weight again for every generated token); False keeps peft's.
    """
    from peft import PeftModel

    from .fast_dora import use_fast_dora
    from .model import load_causal_lm

    if not (Path(adapter_dir) / "adapter_config.json").exists():
        raise FileNotFoundError(f"{adapter_dir}: no adapter_config.json; train first (chapter 04)")
    base = load_causal_lm(source, compute_dtype, load_in_4bit=load_in_4bit)
    model = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    if fast_dora:
        use_fast_dora(model)
    return model


# ------------------------------------------------------------------ generation

@contextmanager
def dora_caching():
    """Let peft cache DoRA's weight norm and B·A between forwards while in eval mode.

    Without it every generated token recomputes ||W + s B A|| for every adapted layer (a
    dequantization and an out x in product each): fine once per training step, slow per token.
    peft clears the cache when the model goes back to train mode.
    """
    from peft.tuners.lora import dora

    previous, dora.ENABLE_DORA_CACHING = dora.ENABLE_DORA_CACHING, True
    try:
        yield
    finally:
        dora.ENABLE_DORA_CACHING = previous


@dataclass(frozen=True)
class Generation:
    """One completion: its text, whether it ended by itself (end of turn or EOS) rather than at
    max_new_tokens, how many tokens it generated, and which batch (0, 1, ...) generated it."""

    text: str
    stopped: bool
    new_tokens: int
    batch: int = 0


def generate(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int, batch_size: int = 4,
             **decoding) -> list[str]:
    """Completions of chat prompts (lists of messages), decoded without special tokens (see
    `generate_with_details`)."""
    return [g.text for g in generate_with_details(model, tokenizer, prompts, max_new_tokens, batch_size, **decoding)]


@torch.no_grad()
def generate_with_details(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int, batch_size: int = 4,
                          **decoding) -> list[Generation]:
    """Greedy completions of chat prompts, with whether each stopped by itself.

    Stops at the end-of-turn token of the chat template (Gemma: <end_of_turn>) or the EOS token.
    `decoding`: further `model.generate` settings, e.g. repetition_penalty=1.15 (greedy still).
    """
    stop_ids = [tokenizer.eos_token_id]
    end_of_turn = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    if isinstance(end_of_turn, int) and end_of_turn != tokenizer.unk_token_id:
        stop_ids.append(end_of_turn)
    padding_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    device = next(model.parameters()).device
    outputs = []
    try:
        with dora_caching(), dense_4bit_weights_on_cpu(model):
            for start in range(0, len(prompts), batch_size):
                batch = prompts[start:start + batch_size]
                texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in batch]
                enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
                out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stop_ids,
                                     pad_token_id=tokenizer.pad_token_id, **decoding)
                new = out[:, enc["input_ids"].shape[1]:]
                for row, text in zip(new.tolist(), tokenizer.batch_decode(new, skip_special_tokens=True)):
                    ended = [i for i, token in enumerate(row) if token in stop_ids]
                    outputs.append(Generation(text, bool(ended), ended[0] if ended else len(row),
                                              start // batch_size))
    finally:
        tokenizer.padding_side = padding_side
    return outputs


# ------------------------------------------------------------------ teacher-forced loss

@torch.no_grad()
def response_loss(model, tokenizer, records: list[Record], batch_size: int = 4, chunk_tokens: int = 256,
                  last_turn_only: bool = False) -> dict:
    """Token-weighted mean loss over assistant tokens. Returns {'loss', 'perplexity', 'tokens'}.

    `last_turn_only`: only the final assistant turn counts (for prompts with worked examples
    before the question, `with_examples`). The output head runs on the counted tokens only,
    `chunk_tokens` rows at a time (`lib.loss.chunked_cross_entropy`), so a batch never holds its
    full 262k-vocabulary logits.
    """
    from .loss import causal_lm_parts, chunked_cross_entropy

    device = next(model.parameters()).device
    parts = causal_lm_parts(model)
    total, count = 0.0, 0
    encoded = []
    for r in records:
        tokens = tokenize_conversation(tokenizer, r.messages)
        if last_turn_only:  # the tokens before the last turn's answer carry no loss
            prompt = len(tokenizer.apply_chat_template(r.messages[:-1], tokenize=True, add_generation_prompt=True,
                                                       return_dict=True)["input_ids"])
            tokens["assistant_masks"] = [0] * prompt + tokens["assistant_masks"][prompt:]
        encoded.append(tokens)
    with dense_4bit_weights_on_cpu(model):
        for start in range(0, len(encoded), batch_size):
            batch = encoded[start:start + batch_size]
            width = max(len(e["input_ids"]) for e in batch)
            ids = torch.full((len(batch), width), tokenizer.pad_token_id)
            labels = torch.full((len(batch), width), -100)
            attention = torch.zeros((len(batch), width), dtype=torch.long)
            for i, e in enumerate(batch):
                n = len(e["input_ids"])
                ids[i, :n] = torch.tensor(e["input_ids"])
                attention[i, :n] = 1
                labels[i, :n] = torch.tensor(response_labels(e))
            ids, attention, labels = ids.to(device), attention.to(device), labels.to(device)
            tokens = int((labels[:, 1:] != -100).sum())
            if parts is not None:
                decoder, head, softcap = parts
                hidden = decoder(input_ids=ids, attention_mask=attention, use_cache=False).last_hidden_state
                total += chunked_cross_entropy(hidden, labels, head.weight, chunk_tokens, softcap, num_items=1).item()
            else:  # not a plain causal LM: its own logits
                logits = model(input_ids=ids, attention_mask=attention).logits.float()
                total += torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                           labels[:, 1:].reshape(-1), reduction="sum").item()
            count += tokens
    loss = total / count
    return {"loss": loss, "perplexity": math.exp(loss), "tokens": count}


# ------------------------------------------------------------------ code metrics

_FENCE = re.compile(r"```(?:python|py)?\s*\n(.*?)(?:```|$)", re.DOTALL)


def extract_code(text: str) -> str:
    """The code in a response: the first fenced block if there is one, else the whole text."""
    match = _FENCE.search(text)
    return (match.group(1) if match else text).strip("\n")


def parses(code: str) -> bool:
    """True if `code` is syntactically valid Python."""
    try:
        ast.parse(code)
        return True
    except (SyntaxError, ValueError):
        return False


def defines_function(code: str, name: str) -> bool:
    """True if `code` parses and defines a function called `name` (at any depth)."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return False
    return any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == name for n in ast.walk(tree))


def chrf(hypotheses: list[str], references: list[str]) -> float:
    """Corpus chrF (0-100) of hypotheses against one reference each (sacrebleu defaults)."""
    from sacrebleu.metrics import CHRF

    return CHRF().corpus_score(hypotheses, [references]).score


REPEATED_LINE_TIMES = 3
REPEATED_LINE_MIN_CHARS = 10  # shorter lines ("else:", "return None") repeat in correct code


def repeats_a_line(text: str, times: int = REPEATED_LINE_TIMES) -> bool:
    """True when a line of at least REPEATED_LINE_MIN_CHARS characters (stripped) occurs `times`+
    times: the loop a small model falls into, writing the same statement until max_new_tokens."""
    from collections import Counter

    lines = Counter(line.strip() for line in text.splitlines() if len(line.strip()) >= REPEATED_LINE_MIN_CHARS)
    return any(n >= times for n in lines.values())


def distinct_2(text: str) -> float | None:
    """Distinct word bigrams over all word bigrams (1.0: no bigram repeats); None under 2 words."""
    words = text.split()
    bigrams = list(zip(words, words[1:]))
    return len(set(bigrams)) / len(bigrams) if bigrams else None


@lru_cache(maxsize=256)
def module_globals(module: str) -> frozenset[str] | None:
    """The global names of a real module (imported here), or None if it does not import."""
    import importlib
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return frozenset(vars(importlib.import_module(module)))
    except Exception:  # any import error means: unknown module
        return None


def unresolved_names(code: str, function: str, module: str | None = None) -> list[str] | None:
    """Names `function` (defined in `code`) reads as globals that nothing defines: not a builtin,
    not defined at the top level of `code`, not a global of the real `module`. Parameters and
    locals, and nested scopes' own names, are resolved by the compiler (`symtable`). None when
    `code` does not parse, does not define `function`, or `module` does not import."""
    import builtins
    import symtable

    try:
        table = symtable.symtable(code, "<generated>", "exec")
    except (SyntaxError, ValueError):
        return None
    scopes = [t for t in table.get_children() if t.get_name() == function and t.get_type() == "function"]
    if not scopes:
        return None
    known = set(dir(builtins)) | {s.get_name() for s in table.get_symbols() if s.is_assigned() or s.is_imported()
                                  or s.is_namespace()}
    if module:
        real = module_globals(module)
        if real is None:
            return None
        known |= real
    missing, stack = set(), [scopes[0]]
    while stack:
        scope = stack.pop()
        missing |= {s.get_name() for s in scope.get_symbols() if s.is_global() and s.is_referenced()}
        stack += scope.get_children()
    return sorted(missing - known)


def code_metrics(generations: list, records: list[Record], run_doctests: bool = True) -> tuple[dict, list[dict]]:
    """Aggregate code metrics (see the module docstring) and one row per example.

    `generations`: `Generation`s (or plain strings, when whether they stopped is unknown).
    Aggregates are percentages over all generations, except distinct-2 (a mean) and the doctest
    pass rate (over the examples that have doctests, with their count).
    """
    from .code_sandbox import doctest_examples, run_doctests as doctests_of

    rows = []
    for generation, record in zip(generations, records):
        text = generation.text if isinstance(generation, Generation) else generation
        stopped = generation.stopped if isinstance(generation, Generation) else None
        code = extract_code(text)
        name, module = record.meta.get("function"), record.meta.get("module")
        unresolved = unresolved_names(code, name, module) if name else None
        examples = doctest_examples(record.messages[-2]["content"]) if name and run_doctests else ""
        doctest = doctests_of(code, name, examples, module) if examples else None
        row = {"function": name, "parses": parses(code),
               "defines_function": defines_function(code, name) if name else None,
               "names_resolve": unresolved == [] if unresolved is not None else False,
               "unresolved": unresolved or [], "repeated_line": repeats_a_line(text), "distinct_2": distinct_2(text),
               "stopped": stopped, "doctest": doctest.status if doctest else None,
               "new_tokens": getattr(generation, "new_tokens", None), "batch": getattr(generation, "batch", None),
               "generation": text, "reference": record.reference}
        row["clean"] = bool(row["defines_function"] and row["names_resolve"] and not row["repeated_line"]
                            and stopped is not False)
        rows.append(row)
    n = len(rows)

    def rate(key, of=rows):
        values = [r[key] for r in of if r[key] is not None]
        return 100 * sum(values) / len(values) if values else None

    tested = [r for r in rows if r["doctest"] is not None]
    diversity = [r["distinct_2"] for r in rows if r["distinct_2"] is not None]
    return {
        "parse_rate": rate("parses"), "defines_function_rate": rate("defines_function"),
        "names_resolve_rate": rate("names_resolve"), "repeated_line_rate": rate("repeated_line"),
        "stopped_rate": rate("stopped"), "distinct_2": sum(diversity) / len(diversity) if diversity else None,
        "doctest_pass_rate": 100 * sum(r["doctest"] == "passed" for r in tested) / len(tested) if tested else None,
        "doctest_examples": len(tested), "clean_rate": rate("clean"),
        "chrf": chrf([extract_code(r["generation"]) for r in rows], [r["reference"] for r in rows]),
        "generated": n,
    }, rows


def adapter_switch(model, enabled: bool):
    """A context in which a peft model runs with its adapter (enabled) or as its base model."""
    return nullcontext() if enabled or not hasattr(model, "disable_adapter") else model.disable_adapter()


def with_examples(record: Record, examples: list[Record]) -> Record:
    """`record` asked after worked examples (in-context, "few-shot" prompting, Brown et al. 2020,
    arXiv:2005.14165): each example's question and answer as earlier turns of the conversation."""
    turns = [message for example in examples for message in example.messages]
    return Record(turns + record.messages, record.file, record.line, dict(record.meta))


def generation_subset(records: list[Record], generate_n: int) -> list[Record]:
    """The records to generate for: the first `generate_n`, plus every later one whose prompt has
    doctest examples (there are few, and they are the only executable check)."""
    from .code_sandbox import doctest_examples

    return records[:generate_n] + [r for r in records[generate_n:] if doctest_examples(r.messages[-2]["content"])]


def evaluate_model(model, tokenizer, records: list[Record], generate_n: int, max_new_tokens: int,
                   batch_size: int = 4, adapter: bool = True, loss: bool = True, examples: list[Record] = (),
                   **decoding) -> tuple[dict, list[dict]]:
    """All metrics for one model on `records`; with `adapter=False` a peft model runs as its base.

    Loss uses every record (skipped with loss=False); generation metrics use `generation_subset`.
    `examples`: worked examples asked before every record (`with_examples`); the loss then counts
    the record's answer only. `decoding`: extra `model.generate` settings (e.g. repetition_penalty).
    """
    model.eval()
    subset = generation_subset(records, generate_n)
    asked = [with_examples(r, list(examples)) for r in subset] if examples else subset
    with adapter_switch(model, adapter), dense_4bit_weights_on_cpu(model):  # one set of copies for both
        metrics = {}
        if loss:
            scored = [with_examples(r, list(examples)) for r in records] if examples else records
            metrics = response_loss(model, tokenizer, scored, batch_size, last_turn_only=bool(examples))
        generations = generate_with_details(model, tokenizer, [r.prompt_messages for r in asked], max_new_tokens,
                                            batch_size, **decoding)
    code, rows = code_metrics(generations, subset)
    return metrics | code, rows


# ------------------------------------------------------------------ gates

@dataclass(frozen=True)
class GateResult:
    name: str
    passed: bool
    detail: str

    @property
    def verdict(self) -> str:
        return "PASS" if self.passed else "FAIL"


def baseline_gate(base_metrics: dict, path: str | Path) -> GateResult:
    """Write the base model's metrics to `path`; passes when loss and chrF are finite numbers."""
    write_json(path, base_metrics)
    finite = all(isinstance(base_metrics.get(k), (int, float)) and math.isfinite(base_metrics[k])
                 for k in ("loss", "chrf"))
    return GateResult("baseline-established", finite, f"baseline written to {path}")


def performance_gate(base: dict, tuned: dict, min_loss_drop: float, min_task_gain: float,
                     task_metric: str = "clean_rate", base_rows: list[dict] | None = None,
                     tuned_rows: list[dict] | None = None, max_p: float = 0.05) -> GateResult:
    """Fine-tuned passes if its response loss is at least `min_loss_drop` (relative, 0-1) below the
    base model's and its `task_metric` (a percentage) at least `min_task_gain` points above; with
    the per-example rows of both (same prompts), the gain must also be significant by an exact
    McNemar test (p < `max_p`) on the paired outcomes (`task_metric` without "_rate").

    Data without the task metric (records that name no function) is gated on the loss alone,
    and the detail says so.
    """
    drop = (base["loss"] - tuned["loss"]) / base["loss"]
    detail = (f"response loss {base['loss']:.3f} -> {tuned['loss']:.3f} ({100 * drop:.1f}% lower, "
              f"need {100 * min_loss_drop:.0f}%)")
    passed = drop >= min_loss_drop
    if base.get(task_metric) is None or tuned.get(task_metric) is None:
        return GateResult("model-performance", passed, f"{detail}; no {task_metric} for this data")
    gain = tuned[task_metric] - base[task_metric]
    detail += (f"; {task_metric} {base[task_metric]:.1f}% -> {tuned[task_metric]:.1f}% "
               f"({gain:+.1f} points, need +{min_task_gain:.0f})")
    passed = passed and gain >= min_task_gain
    if base_rows is not None and tuned_rows is not None:
        key = task_metric.removesuffix("_rate")
        only_base = sum(bool(b[key]) and not t[key] for b, t in zip(base_rows, tuned_rows))
        only_tuned = sum(bool(t[key]) and not b[key] for b, t in zip(base_rows, tuned_rows))
        p = mcnemar_exact_p(only_base, only_tuned)
        detail += f"; McNemar exact p = {p:.2g} ({only_tuned} prompts better, {only_base} worse; need < {max_p})"
        passed = passed and p < max_p
    return GateResult("model-performance", passed, detail)


def mcnemar_exact_p(only_reference: int, only_other: int) -> float:
    """Two-sided exact McNemar p-value for paired pass/fail outcomes (McNemar 1947).

    only_reference: examples the reference passes and the other fails; only_other: the reverse.
    Under "no difference" the discordant examples split 50/50: p = 2 * P(Binomial(n, 1/2) <= min).
    """
    import math

    n, k = only_reference + only_other, min(only_reference, only_other)
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)


def quantization_gate(reference: dict, quantized: dict, name: str, reference_rows: list[dict],
                      quantized_rows: list[dict], max_relative: float = 0.05, alpha: float = 0.05,
                      task_metric: str = "clean"):
    """A GateResult for a quantized model against the merged 16-bit one.

    Perplexity (teacher-forced, every test record) must be within `max_relative` (0-1). The task
    metric (share of clean generations, `lib.evaluation.code_metrics`) must be within `max_relative`
    too, or, when it is not, the paired difference must not be significant (exact McNemar test
    at `alpha`): with n generations one example moves the rate by 100/n points, and greedy decoding
    turns tiny numeric differences into different answers, so a 5% band alone would fail even
    the unquantized model run by another engine. The detail states which case applied.
    """
    ppl_change = quantized["perplexity"] / reference["perplexity"] - 1
    detail = f"perplexity {reference['perplexity']:.3f} -> {quantized['perplexity']:.3f} ({ppl_change:+.1%})"
    passed = abs(ppl_change) <= max_relative
    pairs = [(r[task_metric], q[task_metric]) for r, q in zip(reference_rows, quantized_rows)
             if r.get(task_metric) is not None and q.get(task_metric) is not None]
    if pairs:
        ref_rate, got_rate = (100 * sum(p[i] for p in pairs) / len(pairs) for i in (0, 1))
        change = (got_rate - ref_rate) / ref_rate if ref_rate else (0.0 if got_rate == ref_rate else float("inf"))
        p_value = mcnemar_exact_p(sum(r and not q for r, q in pairs), sum(q and not r for r, q in pairs))
        detail += (f"; {task_metric} {ref_rate:.1f}% -> {got_rate:.1f}% ({change:+.1%}, n={len(pairs)}, "
                   f"McNemar p={p_value:.2f})")
        if abs(change) > max_relative:
            detail += " not significant" if p_value >= alpha else " significant"
            passed = passed and p_value >= alpha
    return GateResult(f"quantization-verified ({name})", passed, f"{detail}; need within {max_relative:.0%}")


def answers_html(rows: dict[str, list[dict]], reference_label: str = "reference") -> str:
    """Every generated answer beside its reference, one collapsible block per prompt (HTML
    <details>), with each model's checks in its heading. `rows`: {model name: code_metrics rows},
    the same prompts in the same order."""
    import html

    flags = ("defines_function", "names_resolve", "repeated_line", "stopped", "clean")
    names = list(rows)
    blocks = []
    for i, first in enumerate(rows[names[0]]):
        cells = []
        for name in names:
            row = rows[name][i]
            marks = ", ".join(f"{flag.replace('_', ' ')}: {row[flag]}" for flag in flags if row[flag] is not None)
            missing = f"; unresolved: {', '.join(row['unresolved'])}" if row["unresolved"] else ""
            doctest = f"; doctests: {row['doctest']}" if row["doctest"] else ""
            cells.append(f"<td><b>{html.escape(name)}</b><br><small>{html.escape(marks + missing + doctest)}"
                         f"</small><pre>{html.escape(row['generation'])}</pre></td>")
        cells.append(f"<td><b>{reference_label}</b><pre>{html.escape(first['reference'])}</pre></td>")
        clean = ", ".join(f"{name}: {'clean' if rows[name][i]['clean'] else 'not clean'}" for name in names)
        blocks.append(f"<details><summary><code>{html.escape(str(first['function']))}</code> ({clean})</summary>"
                      f"<table><tr>{''.join(cells)}</tr></table></details>")
    return "\n".join(blocks)


def write_gates(path: str | Path, gates: list[GateResult]) -> None:
    """Save `gates` to `path` as a JSON list, each gate's fields and its verdict (atomically)."""
    write_json(path, [asdict(g) | {"verdict": g.verdict} for g in gates])
