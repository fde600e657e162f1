"""Trains the tiny Gemma through the unsloth backend in its own process (unsloth patches
transformers on import): python tests/unsloth_worker.py MODEL_DIR RUN_DIR. Prints one JSON line."""

import json
import sys

import unsloth  # noqa: F401  (first, as in the chapters)
import torch

from helpers import COMPUTE_DTYPE, code_records
from lib.fast_dora import fast_dora_layers
from lib.lora import TrinityConfig, trainable_parameters
from lib.model import ModelSource
from lib.training import TrainingConfig, load_for_training, train

if __name__ == "__main__":
    model_dir, run_dir = sys.argv[1], sys.argv[2]
    model, tokenizer = load_for_training(ModelSource("tiny", model_dir, "local"), TrinityConfig(rank=8), "unsloth",
                                         COMPUTE_DTYPE, 128)
    config = TrainingConfig(max_steps=3, batch_size=2, save_steps=10, warmup_steps=0, max_seq_length=128,
                            sample_every=0)
    result = train(model, tokenizer, code_records(8), config, run_dir, "cpu", COMPUTE_DTYPE)
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
