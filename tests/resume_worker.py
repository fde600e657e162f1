"""Trains the tiny Gemma for the resume test: python tests/resume_worker.py MODEL_DIR RUN_DIR SECONDS_PER_STEP"""

import sys
import time

import torch
from transformers import TrainerCallback

from helpers import code_records
from lib.run_spec import RunSpec
from lib.training import load_for_training, train

SETTINGS = dict(rank=8, backend="peft", max_steps=6, batch_size=2, save_steps=2, learning_rate=1e-3, warmup_steps=0,
                max_seq_length=128, sample_every=0)


class Slow(TrainerCallback):
    """Gives the test time to interrupt between checkpoints."""

    def __init__(self, seconds):
        self.seconds = seconds

    def on_step_end(self, args, state, control, **kwargs):
        time.sleep(self.seconds)


if __name__ == "__main__":
    model_dir, run_dir, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    torch.manual_seed(0)
    spec = RunSpec.of(model_dir, **SETTINGS)
    model, tokenizer = load_for_training(spec)
    result = train(model, tokenizer, code_records(24), spec, run_dir, "cpu", extra_callbacks=[Slow(seconds)])
    print("resumed_from", result.resumed_from)
