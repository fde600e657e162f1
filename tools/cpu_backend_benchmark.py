"""Compare training backends and compute dtypes on this CPU: same data, model, Trinity and steps.

    python -m tools.cpu_backend_benchmark peft float32
    python -m tools.cpu_backend_benchmark unsloth bfloat16 [--steps 8] [--chunk-tokens 0]

One backend per process (unsloth patches transformers when imported, so it is imported first).
Prints one JSON line with tokens/s and peak RSS; data/measurements/ holds results
(unsloth-cpu-fallback.json, cpu-compute-dtype.json). `--chunk-tokens 0` turns the chunked
response-only loss off (full logits), to measure what it saves.
"""

import argparse
import json
import sys

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("backend", choices=["peft", "unsloth"])
    parser.add_argument("dtype", choices=["bfloat16", "float32"])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--chunk-tokens", type=int, default=None)
    args = parser.parse_args()
    if args.backend == "unsloth":
        import unsloth  # noqa: F401
    from lib.data import prepare_dataset, split_files
    from lib.environment import quiet_library_logs
    from lib.model import load_tokenizer, resolve_model
    from lib.precision import cpu_features
    from lib.run_spec import RunSpec
    from lib.training import load_for_training, train

    quiet_library_logs()
    source = resolve_model("gemma-3-270m")
    records = prepare_dataset(split_files("data/python-stdlib"), load_tokenizer(source), 384).records["train"][:48]
    chunk = {} if args.chunk_tokens is None else {"loss_chunk_tokens": args.chunk_tokens}
    spec = RunSpec.of("gemma-3-270m", backend=args.backend, compute_dtype=args.dtype, max_steps=args.steps,
                      batch_size=4, save_steps=100, sample_every=0, warmup_steps=2, max_seq_length=384, **chunk)
    model, tokenizer = load_for_training(spec)
    result = train(model, tokenizer, records, spec, f"output/backend-benchmark-{args.backend}-{args.dtype}", "cpu",
                   resume=False)
    keys = ("steps", "tokens_this_session", "train_seconds_this_session", "tokens_per_second", "peak_memory_gib",
            "first_loss", "final_loss")
    print(json.dumps({"backend": args.backend, "dtype": args.dtype, "loss_chunk_tokens": spec.optimisation.loss_chunk_tokens,
                      "cpu": cpu_features()} | {k: result.stats[k] for k in keys}))
    sys.exit(0)
