import pytest
import torch

from lib.gemma3 import GEMMA3_SHAPES, linear_parameter_share, parameter_counts, shape_of
from lib.lora import ALL_LINEAR_MODULES, TrinityConfig, adapter_parameters


@pytest.mark.parametrize("size", list(GEMMA3_SHAPES))
def test_parameter_counts_match_the_transformers_model_of_each_shape(size):
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):  # shapes only, no memory
        model = AutoModelForCausalLM.from_config(GEMMA3_SHAPES[size].to_config())
    counts = parameter_counts(size)
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    q_proj = model.model.layers[0].self_attn.q_proj
    assert GEMMA3_SHAPES[size].linear_shapes()["q_proj"] == tuple(q_proj.weight.shape)


def test_shape_of_reads_a_transformers_config_and_rejects_unknown_names():
    shape = shape_of(GEMMA3_SHAPES["4B"].to_config())
    assert parameter_counts(shape) == parameter_counts("4B")
    with pytest.raises(KeyError, match="unknown Gemma 3 size '3B'"):
        shape_of("3B")


def test_linear_share_grows_with_model_size():
    shares = [linear_parameter_share(size) for size in GEMMA3_SHAPES]
    assert shares == sorted(shares) and 0 < shares[0] < shares[-1] < 1


@pytest.mark.parametrize("use_dora", [False, True])
def test_adapter_parameter_formula_matches_peft(tiny_source, use_dora):
    from peft import get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(tiny_source.path_or_id)
    model = AutoModelForCausalLM.from_config(config)
    targets = ("q_proj", "v_proj", "down_proj")
    peft_model = get_peft_model(model, TrinityConfig(rank=8, use_dora=use_dora, target_modules=targets).to_peft())
    shape = shape_of(config)
    expected = adapter_parameters(shape.linear_shapes(), shape.num_hidden_layers, 8, targets, use_dora)
    assert peft_model.get_nb_trainable_parameters()[0] == expected
    with pytest.raises(KeyError):
        adapter_parameters(shape.linear_shapes(), 1, 8, ("nonexistent_proj",))
    assert set(shape.linear_shapes()) == set(ALL_LINEAR_MODULES)
