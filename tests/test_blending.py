"""LoRA blending (lib.blending) on a tiny random model with two saved adapters."""

import warnings

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import Gemma3ForCausalLM, Gemma3TextConfig

from lib.blending import adapter_bytes, blend, blend_effective, load_adapters, switch_cost

CONFIG = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
              head_dim=16, vocab_size=100, max_position_embeddings=64)


def base():
    torch.manual_seed(0)
    return Gemma3ForCausalLM(Gemma3TextConfig(**CONFIG)).eval()


def saved_adapter(folder, seed, rank=4, use_dora=False):
    model = get_peft_model(base(), LoraConfig(r=rank, lora_alpha=rank, use_dora=use_dora,
                                              target_modules=["q_proj", "v_proj", "down_proj"]))
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                parameter.add_(0.2 * torch.randn_like(parameter))
    model.save_pretrained(folder)
    return folder


def outputs(model, ids):
    with torch.no_grad():
        return model(ids).logits


@pytest.fixture
def ids():
    return torch.randint(0, 100, (1, 10), generator=torch.Generator().manual_seed(1))


def test_a_lora_blend_at_one_zero_is_the_first_adapter(tmp_path, ids):
    model = load_adapters(base(), {"a": saved_adapter(tmp_path / "a", 1), "b": saved_adapter(tmp_path / "b", 2)})
    first = outputs(model, ids)
    model.set_adapter("b")
    second = outputs(model, ids)
    assert blend(model, ["a", "b"], [1.0, 0.0], "linear", "only_a") is None
    assert torch.allclose(outputs(model, ids), first, atol=1e-5)
    assert blend(model, ["a", "b"], [0.5, 0.5], "cat", "halfway") is None
    halfway = outputs(model, ids)
    assert not torch.allclose(halfway, first, atol=1e-4) and not torch.allclose(halfway, second, atol=1e-4)


def test_a_refused_combination_returns_peft_s_reason(tmp_path):
    model = load_adapters(base(), {"a": saved_adapter(tmp_path / "a", 1, rank=4),
                                   "b": saved_adapter(tmp_path / "b", 2, rank=8)})
    reason = blend(model, ["a", "b"], [0.5, 0.5], "linear", "mixed")
    assert reason is not None and "mixed" not in model.peft_config
    with pytest.raises(ValueError, match="unknown method"):
        blend(model, ["a", "b"], [0.5, 0.5], "average", "mixed")
    with pytest.raises(ValueError, match="cannot be empty or hold '.'"):
        blend(model, ["a", "a"], [0.5, 0.5], "linear", "linear-0.5")
    with pytest.raises(ValueError, match="cannot be empty or hold '.'"):
        blend_effective(model, ["a", "b"], [0.5, 0.5], "effective-0.5", rank=4)


def test_dora_magnitudes_are_lost_by_peft_and_kept_by_the_effective_blend(tmp_path, ids):
    model = load_adapters(base(), {"a": saved_adapter(tmp_path / "a", 1, use_dora=True),
                                   "b": saved_adapter(tmp_path / "b", 2, use_dora=True)})
    model.set_adapter("a")
    first = outputs(model, ids)
    assert blend(model, ["a", "b"], [1.0, 0.0], "linear", "peft_blend") is None
    peft_way = outputs(model, ids)
    for name, parameter in model.named_parameters():  # as a model trained in this process has them
        parameter.requires_grad_("lora_" in name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. autograd recording what only writes weights
        stats = blend_effective(model, ["a", "b"], [1.0, 0.0], "effective", rank=32)  # full rank of these layers
    assert stats["energy_kept_median"] == pytest.approx(1.0)
    assert torch.allclose(outputs(model, ids), first, atol=1e-4)  # exact at full rank
    assert (peft_way - first).abs().max() > 100 * (outputs(model, ids) - first).abs().max()


def test_switching_adapters_is_timed_and_their_bytes_counted(tmp_path, ids):
    model = load_adapters(base(), {"a": saved_adapter(tmp_path / "a", 1), "b": saved_adapter(tmp_path / "b", 2)})
    rows = switch_cost(model, ["a", "b"], ids, repeats=2)
    assert [r["adapter"] for r in rows] == ["a", "b"] and all(r["forward_s"] > 0 for r in rows)
    # q (32x32) and v (16x32) and down (32x64) at rank 4, 2 layers, float32
    assert adapter_bytes(model, "a") == 2 * 4 * 4 * ((32 + 32) + (32 + 16) + (64 + 32))


@pytest.mark.parametrize("method", ["svd", "ties", "dare_ties", "magnitude_prune"])
def test_the_svd_methods_blend_two_adapters_into_a_third_one(tmp_path, ids, method):
    """peft's SVD-based methods (the chapter's smoke run blends with linear and cat only): each
    adds an active adapter whose outputs are neither input adapter's."""
    model = load_adapters(base(), {"a": saved_adapter(tmp_path / "a", 1), "b": saved_adapter(tmp_path / "b", 2)})
    model.set_adapter("a")
    first = outputs(model, ids)
    model.set_adapter("b")
    second = outputs(model, ids)
    assert blend(model, ["a", "b"], [0.5, 0.5], method, "blended") is None
    assert model.active_adapter == "blended" and model.peft_config["blended"].r == 4
    blended = outputs(model, ids)
    assert torch.isfinite(blended).all()
    assert not torch.allclose(blended, first, atol=1e-4) and not torch.allclose(blended, second, atol=1e-4)


def test_top_singular_is_near_the_exact_truncation_and_leaves_the_rng_alone():
    from lib.blending import top_singular

    torch.manual_seed(1)
    m, n, k = 640, 2048, 128
    u, _ = torch.linalg.qr(torch.randn(m, m))
    v, _ = torch.linalg.qr(torch.randn(n, m))
    matrix = (u / torch.arange(1, m + 1).float().sqrt()) @ v.T  # singular values i^-1/2: a slow decay
    state = torch.random.get_rng_state()
    U, S, Vh = top_singular(matrix, k)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert U.shape == (m, k) and S.shape == (k,) and Vh.shape == (k, n)
    exact_u, exact_s, exact_vh = torch.linalg.svd(matrix, full_matrices=False)
    best = (matrix - (exact_u[:, :k] * exact_s[:k]) @ exact_vh[:k]).norm()
    assert (matrix - (U * S) @ Vh).norm() < 1.01 * best
    assert float(S.square().sum()) == pytest.approx(float(exact_s[:k].square().sum()), rel=0.01)
    narrow = matrix[:, :200]  # k + oversample over half its width: the exact SVD
    assert torch.allclose(top_singular(narrow, k)[1], torch.linalg.svdvals(narrow)[:k])
