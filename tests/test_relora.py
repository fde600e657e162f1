"""ReLoRA and rank-1 merging (lib.relora) on tiny random models."""

import pytest
import torch
from helpers import COMPUTE_DTYPE, code_records, tiny_run
from peft import LoraConfig, get_peft_model
from transformers import Gemma3ForCausalLM, Gemma3TextConfig

from lib.relora import (ReLoRACallback, ReLoRASchedule, jagged_cosine, merge_and_restart, principal_angles,
                        prune_optimizer_state, snapshot, total_update_ranks)


def tiny_lora(rank=2, seed=0):
    torch.manual_seed(seed)
    config = Gemma3TextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              num_key_value_heads=1, head_dim=16, vocab_size=100, max_position_embeddings=64)
    model = get_peft_model(Gemma3ForCausalLM(config), LoraConfig(r=rank, lora_alpha=rank, target_modules="all-linear"))
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.1)  # a trained-looking update
    return model.eval()


def test_the_jagged_schedule_warms_up_after_every_merge():
    schedule = ReLoRASchedule(reset_every=10, restart_warmup=3)
    lr = [jagged_cosine(step, 40, schedule, warmup_steps=2) for step in range(40)]
    assert lr[0] == 0.5 and lr[1] == 1.0
    assert lr[10] < lr[11] < lr[12] < lr[13] and lr[13] == pytest.approx(jagged_cosine(13, 40, ReLoRASchedule(10, 0.9, 0), 2))
    plain = [jagged_cosine(step, 40, ReLoRASchedule(10, 1.0, 0), 2) for step in range(2, 40)]
    assert all(a >= b for a, b in zip(plain, plain[1:]))  # no restarts: the cosine alone
    with pytest.raises(ValueError):
        ReLoRASchedule(reset_every=4, restart_warmup=4)


def test_a_merge_keeps_the_output_and_restarts_the_adapter():
    model = tiny_lora()
    ids = torch.randint(0, 100, (1, 12))
    with torch.no_grad():
        before = model(ids).logits
        stats = merge_and_restart(model)
        after = model(ids).logits
    assert stats["layers"] == 14 and stats["requantization_error_max"] < 1e-5  # a float base: exact
    assert torch.allclose(before, after, atol=1e-4)
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    assert torch.count_nonzero(layer.lora_B["default"].weight) == 0 and not layer.merged


def test_a_merge_into_nf4_requantizes_with_a_measured_error(tiny_source):
    from lib.model import load_causal_lm

    model = get_peft_model(load_causal_lm(tiny_source, COMPUTE_DTYPE, load_in_4bit=True),
                           LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj", "up_proj"]))
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.05)
    stats = merge_and_restart(model)
    assert stats["layers"] == 4 and 0 < stats["requantization_error_median"] < 5


def test_pruning_zeroes_the_smallest_moments():
    parameter = torch.nn.Parameter(torch.zeros(1000))
    optimizer = torch.optim.AdamW([parameter])
    optimizer.state[parameter] = {"exp_avg": torch.arange(1000.0), "exp_avg_sq": torch.arange(1000.0),
                                  "step": torch.tensor(7.0)}
    zeroed = prune_optimizer_state(optimizer, [parameter], 0.99)
    assert zeroed == 2 * 990 and int(torch.count_nonzero(optimizer.state[parameter]["exp_avg"])) == 10
    assert optimizer.state[parameter]["exp_avg"][-1] == 999
    prune_optimizer_state(optimizer, [parameter], 1.0)
    assert torch.count_nonzero(optimizer.state[parameter]["exp_avg"]) == 0 and optimizer.state[parameter]["step"] == 0


def test_principal_angles_of_same_and_orthogonal_spaces():
    basis = torch.eye(6)
    assert torch.allclose(principal_angles(basis[:, :2], basis[:, :2] @ torch.tensor([[2.0, 1], [0, 3]])),
                          torch.zeros(2), atol=1e-3)
    assert torch.allclose(principal_angles(basis[:, :2], basis[:, 2:4]), torch.full((2,), 90.0), atol=1e-3)


def test_merged_rank_1_updates_add_up_past_rank_1(tiny_source, tmp_path):
    from lib.training import load_for_training, train

    spec = tiny_run(tiny_source, rank=1, alpha=1, use_rslora=False, use_dora=False, target_modules=("q_proj",),
                    precision="fp32", compute_dtype="float32", max_steps=8, save_steps=100, learning_rate=5e-3,
                    lr_scheduler_type="constant")
    model, tokenizer = load_for_training(spec)
    before = snapshot(model, modules=("q_proj",))
    callback = ReLoRACallback(ReLoRASchedule(reset_every=2, prune_ratio=1.0, restart_warmup=0), total_steps=8,
                              learning_rate=5e-3, warmup_steps=0, tracked=((0, "q_proj"),))
    train(model, tokenizer, code_records(8), spec, tmp_path, "cpu", resume=False,
          extra_callbacks=[callback])
    assert [m["step"] for m in callback.merges] == [2, 4, 6]
    assert "smallest_angle_to_previous_deg" in callback.merges[1]
    growth = [m["accumulated_effective_rank"]["0.q_proj"] for m in callback.merges]
    assert growth[0] == pytest.approx(1, abs=1e-3) and growth[-1] > 1.2  # one rank-1 merge, then more directions
    ranks = total_update_ranks(model, before, rank=1)
    assert all(r["rank_above_1pct"] >= 2 for r in ranks), ranks
