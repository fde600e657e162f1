"""Evaluating base vs fine-tuned models on held-out conversations.

Metrics, per model:
* response loss: mean cross-entropy (nats/token) over the reference assistant tokens only, and
  perplexity = exp(loss) (teacher forcing, the same masking as training);
* on greedy generations: share that parses as Python (`ast.parse`), share that defines the asked
  function name, and chrF against the reference (Popović 2015, via sacrebleu's corpus_chrf).

Gates, stored next to the metrics so a pipeline can read them:
* baseline-established: the base model's metrics were measured and written to baseline.json;
* model-performance: the fine-tuned model beats the baseline by the stated margins.
"""

from __future__ import annotations

import ast
import math
import re
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .artifacts import write_json
from .data import Record, response_labels, tokenize_conversation


# ------------------------------------------------------------------ loading

def load_finetuned(source, adapter_dir: str | Path, compute_dtype: torch.dtype, load_in_4bit: bool = True):
    """The NF4 base with a saved adapter on top, in eval mode: the model as it was trained.

    `source` is a `lib.model.ModelSource`; raises FileNotFoundError if `adapter_dir` holds no
    adapter_config.json.
    """
    from peft import PeftModel

    from .model import load_causal_lm

    if not (Path(adapter_dir) / "adapter_config.json").exists():
        raise FileNotFoundError(f"{adapter_dir}: no adapter_config.json; train first (chapter 04)")
    base = load_causal_lm(source, compute_dtype, load_in_4bit=load_in_4bit)
    return PeftModel.from_pretrained(base, str(adapter_dir)).eval()


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


@torch.no_grad()
def generate(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int, batch_size: int = 4) -> list[str]:
    """Greedy completions of chat prompts (lists of messages), decoded without special tokens.

    Stops at the end-of-turn token of the chat template (Gemma: <end_of_turn>) or the EOS token.
    """
    stop_ids = [tokenizer.eos_token_id]
    end_of_turn = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    if isinstance(end_of_turn, int) and end_of_turn != tokenizer.unk_token_id:
        stop_ids.append(end_of_turn)
    padding_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    device = next(model.parameters()).device
    outputs = []
    try:
        with dora_caching():
            for start in range(0, len(prompts), batch_size):
                batch = prompts[start:start + batch_size]
                texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in batch]
                enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
                out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stop_ids,
                                     pad_token_id=tokenizer.pad_token_id)
                outputs.extend(tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True))
    finally:
        tokenizer.padding_side = padding_side
    return outputs


# ------------------------------------------------------------------ teacher-forced loss

@torch.no_grad()
def response_loss(model, tokenizer, records: list[Record], batch_size: int = 4, chunk_tokens: int = 256) -> dict:
    """Token-weighted mean loss over assistant tokens. Returns {'loss', 'perplexity', 'tokens'}.

    The output head runs on the assistant tokens only, `chunk_tokens` rows at a time
    (`lib.loss.chunked_cross_entropy`), so a batch never holds its full 262k-vocabulary logits.
    """
    from .loss import causal_lm_parts, chunked_cross_entropy

    device = next(model.parameters()).device
    parts = causal_lm_parts(model)
    total, count = 0.0, 0
    encoded = [tokenize_conversation(tokenizer, r.messages) for r in records]
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


def code_metrics(generations: list[str], records: list[Record]) -> tuple[dict, list[dict]]:
    """Aggregate parse %, defines-function % and chrF, and one row per example."""
    rows = []
    for text, record in zip(generations, records):
        code = extract_code(text)
        name = record.meta.get("function")
        rows.append({"function": name, "parses": parses(code),
                     "defines_function": defines_function(code, name) if name else None,
                     "generation": text, "reference": record.reference})
    named = [r for r in rows if r["defines_function"] is not None]
    return {
        "parse_rate": 100 * sum(r["parses"] for r in rows) / len(rows),
        "defines_function_rate": 100 * sum(r["defines_function"] for r in named) / len(named) if named else None,
        "chrf": chrf([extract_code(g) for g in generations], [r.reference for r in records]),
        "generated": len(rows),
    }, rows


def adapter_switch(model, enabled: bool):
    """A context in which a peft model runs with its adapter (enabled) or as its base model."""
    return nullcontext() if enabled or not hasattr(model, "disable_adapter") else model.disable_adapter()


def evaluate_model(model, tokenizer, records: list[Record], generate_n: int, max_new_tokens: int,
                   batch_size: int = 4, adapter: bool = True) -> tuple[dict, list[dict]]:
    """All metrics for one model on `records`; with `adapter=False` a peft model runs as its base.

    Loss uses every record; generation metrics use the first `generate_n`.
    """
    model.eval()
    with adapter_switch(model, adapter):
        metrics = response_loss(model, tokenizer, records, batch_size)
        subset = records[:generate_n]
        generations = generate(model, tokenizer, [r.prompt_messages for r in subset], max_new_tokens, batch_size)
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
                     task_metric: str = "defines_function_rate") -> GateResult:
    """Fine-tuned passes if its response loss is at least `min_loss_drop` (relative, 0-1) below the
    base model's and its `task_metric` (a percentage) at least `min_task_gain` points above.

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
    return GateResult("model-performance", passed and gain >= min_task_gain, detail)


def write_gates(path: str | Path, gates: list[GateResult]) -> None:
    write_json(path, [asdict(g) | {"verdict": g.verdict} for g in gates])
