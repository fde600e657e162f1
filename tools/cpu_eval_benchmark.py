"""Evaluation speed on this CPU: the fine-tuned NF4 model's response loss and greedy generation,
as chapter 06 runs them, before and after the two inference changes.

    python -m tools.cpu_eval_benchmark [--records 8] [--prompts 4] [--new-tokens 64] [--out FILE]

The model is the course's Gemma 3 270M in NF4 (double quant) with a Trinity adapter (r=64, rsLoRA,
DoRA, 7 target modules) whose B is random, as after training (B = 0 would hide the adapter), in the
compute dtype `lib.precision` picks here. Three rows, one process, the same records and prompts:

* peft's DoRA forward, bitsandbytes' per-call dequantization (how the course evaluated before);
* peft's DoRA forward, dense copies of the 4-bit weights (`lib.model.dense_4bit_weights_on_cpu`);
* the course's DoRA forward (`lib.fast_dora`) with the dense copies: `lib.evaluation` today.

Prints a table (seconds, generated tokens/s, speed-up over the first row, whether the loss and the
answers equal the first row's) and writes it with its provenance to --out if given.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import time
from datetime import date
from pathlib import Path


def adapter_as_if_trained(source, folder: Path, dtype) -> Path:
    """Save a Trinity adapter with B ~ N(0, 0.002) (seed 0) on the NF4 base; returns the folder."""
    import torch
    from peft import get_peft_model

    from lib.lora import TrinityConfig
    from lib.model import load_causal_lm

    model = get_peft_model(load_causal_lm(source, dtype), TrinityConfig().to_peft())
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(0.002 * torch.randn(parameter.shape, generator=generator))
    model.save_pretrained(folder)
    return folder


def measure(args) -> dict:
    import tempfile

    import torch

    import lib.evaluation
    from lib.data import load_records
    from lib.environment import package_versions, quiet_library_logs
    from lib.evaluation import generate_with_details, load_finetuned, response_loss
    from lib.model import load_tokenizer, resolve_model
    from lib.precision import choose_compute_dtype, cpu_features

    quiet_library_logs()
    dtype, _ = choose_compute_dtype("cpu")
    source = resolve_model("gemma-3-270m")
    tokenizer = load_tokenizer(source)
    records, _ = load_records(Path("data/python-stdlib/test.jsonl"))
    prompts = [r.prompt_messages for r in records[:args.prompts]]
    dense = lib.evaluation.dense_4bit_weights_on_cpu
    rows = []
    with tempfile.TemporaryDirectory() as work:
        adapter = adapter_as_if_trained(source, Path(work) / "adapter", dtype)
        for label, fast_dora, dense_weights in (
                ("peft DoRA, per-call dequantization (before)", False, False),
                ("peft DoRA, dense 4-bit copies", False, True),
                ("fast DoRA, dense 4-bit copies (now)", True, True)):
            model = load_finetuned(source, adapter, dtype, fast_dora=fast_dora)
            # the "before" rows run lib.evaluation with the dense copies switched off
            lib.evaluation.dense_4bit_weights_on_cpu = dense if dense_weights else (
                lambda model: contextlib.nullcontext(0))
            try:
                started = time.perf_counter()
                loss = response_loss(model, tokenizer, records[:args.records])
                loss_seconds = time.perf_counter() - started
                started = time.perf_counter()
                answers = generate_with_details(model, tokenizer, prompts, args.new_tokens, batch_size=len(prompts))
                generate_seconds = time.perf_counter() - started
            finally:
                lib.evaluation.dense_4bit_weights_on_cpu = dense
            rows.append({"row": label, "loss_seconds": round(loss_seconds, 2), "loss": loss["loss"],
                         "generate_seconds": round(generate_seconds, 2),
                         "generated_tokens": sum(a.new_tokens for a in answers),
                         "answers": [a.text for a in answers]})
            del model
    first = rows[0]
    for row in rows:
        row |= {"tokens_per_second": round(row["generated_tokens"] / row["generate_seconds"], 2),
                "generate_speedup": round(first["generate_seconds"] / row["generate_seconds"], 2),
                "loss_speedup": round(first["loss_seconds"] / row["loss_seconds"], 2),
                "same_answers": row["answers"] == first["answers"],
                "loss_relative_difference": abs(row["loss"] - first["loss"]) / first["loss"]}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    return {"provenance": {"date": date.today().isoformat(), "code": f"commit {commit}", "cpu": cpu_features(),
                           "compute_dtype": str(dtype),
                           "versions": package_versions(),
                           "command": "python -m tools.cpu_eval_benchmark " + " ".join(
                               f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out"),
                           "setup": f"{args.records} test records for the loss (batch 4), {args.prompts} prompts "
                                    f"generated greedily in one batch, {args.new_tokens} new tokens at most"},
            "rows": [{k: v for k, v in r.items() if k != "answers"} for r in rows]}


def table(result: dict) -> str:
    lines = ["| row | loss s | x | generate s | tokens/s | x | same loss | same answers |", "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['row']} | {r['loss_seconds']:.1f} | {r['loss_speedup']:.2f} | {r['generate_seconds']:.1f} | "
                     f"{r['tokens_per_second']:.1f} | {r['generate_speedup']:.2f} | "
                     f"{r['loss_relative_difference']:.1e} | {r['same_answers']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    result = measure(args)
    print(table(result))
    if args.out:
        from lib.artifacts import write_json

        write_json(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
