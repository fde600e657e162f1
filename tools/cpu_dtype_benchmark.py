"""Training speed on this CPU by compute dtype (and backend), measured as ratios within one run.

    python -m tools.cpu_dtype_benchmark peft:bfloat16 peft:float32 [--steps 12] [--out FILE]
    python -m tools.cpu_dtype_benchmark unsloth:bfloat16 peft:bfloat16

Each variant (backend:dtype) is its own model, loaded once (Gemma 3 270M, Trinity r=64, NF4,
rsLoRA, fast DoRA, AdamW, batch 4 at max_seq_length 384, the chunked response-only loss). The
variants then take turns step by step on the same batches, so a neighbour taking the CPU for a
minute slows all of them alike; the table gives each variant's median step time (first two
steps left out) and its median step-by-step ratio to the first variant. These VMs are noisy:
separate runs of the same 8 steps have differed by 2x, paired steps within one run by far less.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="+", help="backend:dtype, e.g. peft:float32")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--out", default=None, help="write the result as JSON here")
    args = parser.parse_args(argv)
    variants = [tuple(v.split(":")) for v in args.variants]
    if any(backend == "unsloth" for backend, _ in variants):
        import unsloth  # noqa: F401  (before transformers, as in the chapters)
    import torch
    from transformers import DataCollatorForSeq2Seq

    from lib.data import prepare_dataset, split_files
    from lib.environment import quiet_library_logs
    from lib.model import load_tokenizer, resolve_model
    from lib.precision import cpu_features, cpu_matmul_speeds
    from lib.loss import response_only_loss
    from lib.run_spec import RunSpec
    from lib.training import load_for_training, tokenized_dataset

    quiet_library_logs()
    torch.set_flush_denormal(True)
    source = resolve_model("gemma-3-270m")
    tokenizer = load_tokenizer(source)
    records = prepare_dataset(split_files("data/python-stdlib"), tokenizer, 384).records["train"][:4 * args.steps]
    collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    rows = list(tokenized_dataset(tokenizer, records, 384))
    batches = [collator(rows[i:i + 4]) for i in range(0, len(rows), 4)]
    runs = []
    for backend, dtype in variants:
        torch.manual_seed(3407)
        model, _ = load_for_training(RunSpec.of("gemma-3-270m", backend=backend, compute_dtype=dtype, max_seq_length=384))
        model.train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
        runs.append({"variant": f"{backend}:{dtype}", "model": model, "optimizer": optimizer, "seconds": [],
                     "losses": []})
    tokens = [int(b["attention_mask"].sum()) for b in batches]
    for batch in batches:
        for run in runs:
            started = time.perf_counter()
            loss = response_only_loss(run["model"], dict(batch), 256)
            loss.backward()
            run["optimizer"].step()
            run["optimizer"].zero_grad(set_to_none=True)
            run["seconds"].append(time.perf_counter() - started)
            run["losses"].append(loss.item())
    first = runs[0]["seconds"][2:]
    table = []
    for run in runs:
        seconds = run["seconds"][2:]
        table.append({"variant": run["variant"], "median s/step": round(statistics.median(seconds), 3),
                      "tokens/s": round(sum(tokens[2:]) / sum(seconds), 1),
                      "x first variant (median of paired steps)": round(statistics.median(
                          s / f for s, f in zip(seconds, first)), 3),
                      "first loss": round(run["losses"][0], 4), "last loss": round(run["losses"][-1], 4)})
    print(f"{'variant':18} {'median s/step':>14} {'tokens/s':>9} {'x first':>8} {'loss first -> last':>20}")
    for row in table:
        print(f"{row['variant']:18} {row['median s/step']:14.3f} {row['tokens/s']:9.1f} "
              f"{row['x first variant (median of paired steps)']:8.3f} {row['first loss']:>9.4f} -> {row['last loss']:.4f}")
    result = {"command": "python -m tools.cpu_dtype_benchmark " + " ".join(sys.argv[1:] if argv is None else argv),
              "date": time.strftime("%Y-%m-%d"), "cpu": cpu_features(), "matmul_gflops": cpu_matmul_speeds().gflops,
              "versions": {"torch": torch.__version__}, "steps": args.steps, "batch": 4, "max_seq_length": 384,
              "tokens_per_step": tokens, "table": table}
    if args.out:
        from lib.artifacts import write_json

        write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
