import pytest
import torch

from lib.dora import (adapted_weight, adapted_weights, correlation_by_step, dora_output_by_hand, layer_changes,
                      magnitude_and_direction, magnitude_direction_change, update_norms)
from lib.lora import TrinityConfig, base_weight, lora_output_by_hand


def peft_model(tiny_source, use_dora: bool, load_in_4bit: bool = False):
    from peft import get_peft_model

    from lib.model import load_causal_lm

    torch.manual_seed(0)
    model = load_causal_lm(tiny_source, torch.float32, load_in_4bit=load_in_4bit)
    model = get_peft_model(model, TrinityConfig(rank=4, use_dora=use_dora).to_peft())
    for module in model.modules():
        if hasattr(module, "lora_B"):
            torch.nn.init.normal_(module.lora_B["default"].weight, std=0.05)  # as if trained
    return model


def test_magnitude_times_direction_rebuilds_the_weight():
    weight = torch.randn(8, 5)
    magnitude, direction = magnitude_and_direction(weight)
    assert magnitude.shape == (8,)
    assert torch.allclose(magnitude[:, None] * direction, weight, atol=1e-6)
    assert torch.allclose(torch.linalg.norm(direction, dim=1), torch.ones(8))


def test_scaling_rows_changes_magnitude_only_rotating_changes_direction_only():
    weight = torch.randn(6, 4)
    delta_m, delta_d = magnitude_direction_change(weight, weight * 2)
    assert delta_m > 0 and delta_d == pytest.approx(0, abs=1e-6)
    rotation = torch.linalg.qr(torch.randn(4, 4)).Q
    delta_m, delta_d = magnitude_direction_change(weight, weight @ rotation)
    assert delta_m == pytest.approx(0, abs=1e-5) and delta_d > 0.01


@pytest.mark.parametrize("use_dora", [False, True])
def test_adapted_weight_equals_peft_merged_weight(tiny_source, use_dora):
    model = peft_model(tiny_source, use_dora)
    layer = model.base_model.model.model.layers[1].mlp.down_proj
    ours = adapted_weight(layer)
    layer.merge()
    assert torch.allclose(ours, layer.get_base_layer().weight.float(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("use_dora,load_in_4bit", [(False, False), (True, False), (True, True)])
def test_outputs_by_hand_equal_peft_forward(tiny_source, use_dora, load_in_4bit):
    model = peft_model(tiny_source, use_dora, load_in_4bit)
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    x = torch.randn(3, 7, layer.in_features)
    with torch.no_grad():
        by_hand = dora_output_by_hand(layer, x) if use_dora else lora_output_by_hand(layer, x)
        expected = layer(x.to(layer.get_base_layer().compute_dtype if load_in_4bit else torch.float32)).float()
    tolerance = 2e-2 if load_in_4bit else 1e-5  # 4-bit: bf16 compute
    assert torch.allclose(by_hand, expected, rtol=tolerance, atol=tolerance * float(by_hand.abs().max()))


def test_changes_start_at_zero_and_track_training(tiny_source):
    model = peft_model(tiny_source, use_dora=True)
    reference = adapted_weights(model)
    assert {module for _, module in reference} == {"q_proj", "v_proj"}
    start = layer_changes(model, reference)
    assert max(max(r["delta_magnitude"], abs(r["delta_direction"])) for r in start) < 1e-6
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    with torch.no_grad():
        layer.lora_magnitude_vector["default"].weight.mul_(1.1)
    rows = {(r["layer"], r["module"]): r for r in layer_changes(model, reference)}
    assert rows[(0, "q_proj")]["delta_magnitude"] > 0
    assert rows[(0, "q_proj")]["delta_direction"] == pytest.approx(0, abs=1e-6)
    assert rows[(1, "q_proj")]["delta_magnitude"] < 1e-6
    norms = update_norms(model)
    assert len(norms) == 2 * 7 and all(r["relative_update"] > 0 for r in norms)
    assert torch.equal(base_weight(layer), layer.get_base_layer().weight.float())


def test_correlation_by_step_is_taken_across_layers_within_each_step():
    rows = [{"step": 1, "layer": i, "delta_direction": i, "delta_magnitude": 10 - i} for i in range(5)]
    rows += [{"step": 2, "layer": i, "delta_direction": i, "delta_magnitude": 2 * i} for i in range(5)]
    rows += [{"step": 3, "layer": i, "delta_direction": 0.0, "delta_magnitude": 0.0} for i in range(5)]
    assert correlation_by_step(rows) == pytest.approx({1: -1.0, 2: 1.0})  # step 3: nothing moved


@pytest.mark.parametrize("use_dora", [False, True])
def test_formula_check_finds_the_identity_start_and_a_wrong_formula(tiny_source, use_dora):
    from peft import get_peft_model

    from lib.lora import formula_check
    from lib.model import load_causal_lm

    def fresh():
        torch.manual_seed(0)
        base = load_causal_lm(tiny_source, torch.float32, load_in_4bit=False)
        return get_peft_model(base, TrinityConfig(rank=4, use_dora=use_dora).to_peft())

    inputs = {"input_ids": torch.tensor([[2, 10, 11, 12, 13]]), "attention_mask": torch.ones(1, 5, dtype=torch.long)}
    formula = dora_output_by_hand if use_dora else lora_output_by_hand
    model = fresh()
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    right = formula_check(model, layer, inputs, formula)
    assert right["zero_init_max_abs"] < 1e-6 and right["formula_max_relative"] < 1e-5
    model = fresh()
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    wrong = formula_check(model, layer, inputs, lambda lay, x: formula(lay, x) * 1.01)  # a formula 1% off
    assert wrong["formula_max_relative"] > 5e-3
