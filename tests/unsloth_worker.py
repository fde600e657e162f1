"""Trains the tiny Gemma through the unsloth backend in its own process (unsloth patches
transformers on import): python tests/unsloth_worker.py MODEL_DIR RUN_DIR. Prints one JSON line."""

import json
import sys

import unsloth  # noqa: F401  (first, as in the chapters)
import torch

from helpers import code_records
from lib.fast_dora import fast_dora_layers
from lib.lora import trainable_parameters
from lib.run_spec import RunSpec
from lib.training import load_for_training, train

if __name__ == "__main__":
    model_dir, run_dir = sys.argv[1], sys.argv[2]
    spec = RunSpec.of(model_dir, rank=8, backend="unsloth", max_steps=3, batch_size=2, save_steps=10, warmup_steps=0,
                      max_seq_length=128, sample_every=0)
    model, tokenizer = load_for_training(spec)
    result = train(model, tokenizer, code_records(8), spec, run_dir, "cpu")
    ids = tokenizer("def add(a, b):\n    return a + b", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        model.train()
        train_mode = model(input_ids=ids, labels=ids).loss.item()
        model.eval()
        eval_mode = model(input_ids=ids, labels=ids).loss.item()
    config = model.peft_config["default"]
    print("RESULT " + json.dumps({"steps": result.stats["steps"], "use_dora": config.use_dora,
                                  "use_rslora": config.use_rslora, "r": config.r, "train_mode": train_mode,
                                  "eval_mode": eval_mode, "trainable": trainable_parameters(model)["trainable"],
                                  "fast_dora_layers": len(fast_dora_layers(model))}))
