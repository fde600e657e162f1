"""Compare the two training backends on this CPU: same data, model, Trinity and steps.

    python -m tools.cpu_backend_benchmark peft
    python -m tools.cpu_backend_benchmark unsloth

One backend per process (unsloth patches transformers when imported, so it is imported first).
Needs the prepared data of a default run (output/default/data, chapter 03). Prints one JSON line
with tokens/s and peak memory; data/measurements/unsloth-cpu-fallback.json holds a result.
"""

import json
import sys

if __name__ == "__main__":
    backend = sys.argv[1]
    if backend == "unsloth":
        import unsloth  # noqa: F401
    import torch

    from lib.data import load_prepared
    from lib.environment import quiet_library_logs
    from lib.lora import TrinityConfig
    from lib.model import resolve_model
    from lib.training import TrainingConfig, load_for_training, train

    quiet_library_logs()
    records = load_prepared("output/default/data")["train"][:48]
    model, tokenizer = load_for_training(resolve_model("gemma-3-270m"), TrinityConfig(), backend, torch.bfloat16, 384)
    config = TrainingConfig(max_steps=8, batch_size=4, save_steps=100, sample_every=0, warmup_steps=2,
                            max_seq_length=384)
    result = train(model, tokenizer, records, config, f"output/backend-benchmark-{backend}", "cpu", torch.bfloat16,
                   resume=False)
    keys = ("steps", "tokens_this_session", "train_seconds_this_session", "tokens_per_second", "peak_memory_gib",
            "final_loss")
    print(json.dumps({"backend": backend} | {k: result.stats[k] for k in keys}))
