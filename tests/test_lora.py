import math

import pytest
import torch

from helpers import tiny_run
from lib.lora import ALL_LINEAR_MODULES, TrinityConfig, trainable_parameters
from lib.training import load_for_training


def test_scaling_rslora_vs_lora():
    assert TrinityConfig(rank=64, alpha=32).scaling == 32 / math.sqrt(64)
    assert TrinityConfig(rank=64, alpha=32, use_rslora=False).scaling == 32 / 64


@pytest.mark.parametrize("kwargs, message", [({"rank": 0}, "rank"), ({"alpha": 0}, "alpha"),
                                             ({"target_modules": ()}, "target_modules")])
def test_invalid_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrinityConfig(**kwargs)


def test_trinity_on_gemma_adapts_all_seven_projections(tiny_source):
    model, _ = load_for_training(tiny_run(tiny_source, rank=8, alpha=16))
    config = model.peft_config["default"]
    assert (config.r, config.lora_alpha, config.use_rslora, config.use_dora) == (8, 16, True, True)
    assert set(config.target_modules) == set(ALL_LINEAR_MODULES)
    layers = [m for n, m in model.named_modules() if n.endswith(ALL_LINEAR_MODULES) and hasattr(m, "lora_A")]
    assert len(layers) == 7 * 2  # 7 projections x 2 layers
    assert all(type(m.base_layer).__name__ == "Linear4bit" for m in layers)
    assert all(m.base_layer.weight.quant_state.quant_type == "nf4" for m in layers)
    # B starts at zero: the adapted model starts as the base model
    assert all(torch.count_nonzero(m.lora_B["default"].weight) == 0 for m in layers)
    # trainable = A and B of each layer + DoRA magnitude (one per output channel)
    expected = sum(8 * (m.in_features + m.out_features) + m.out_features for m in layers)
    assert trainable_parameters(model)["trainable"] == expected


def test_unknown_backend(tiny_source):
    with pytest.raises(ValueError, match="backend='jax'"):
        load_for_training(tiny_run(tiny_source, backend="jax"))


def test_unsloth_backend_runs_the_trinity_on_this_machine(tiny_source, tmp_path):
    """unsloth's path (its CPU fallback here, FastModel on a GPU), in a child process."""
    import json
    import os
    import subprocess
    import sys

    from helpers import ROOT

    env = os.environ | {"PYTHONPATH": f"{ROOT / 'tests'}{os.pathsep}{ROOT}"}
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "unsloth_worker.py"), tiny_source.path_or_id,
                           str(tmp_path)], env=env, capture_output=True, text=True)
    lines = [l for l in done.stdout.splitlines() if l.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    result = json.loads(lines[-1][7:])
    assert (result["steps"], result["use_dora"], result["use_rslora"], result["r"]) == (3, True, True, 8)
    assert result["fast_dora_layers"] == 2 * 7  # the course's DoRA under unsloth: every projection, 2 layers
    assert result["eval_mode"] == pytest.approx(result["train_mode"], rel=1e-3)  # no 4-bit repacking
    assert (tmp_path / "adapter" / "adapter_config.json").exists()
