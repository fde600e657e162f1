"""Chapter 09's instruments: KV-cache accounting, attention statistics and span changes, adapter
spectra, representation similarity, membership inference, gradient norms and capacity."""

import math

import pytest
import torch
from helpers import code_records, tiny_run
from transformers import Gemma3ForCausalLM, Gemma3TextConfig

from lib import attention as A
from lib.adapter_spectra import effective_rank, energy_top, stable_rank, update_singular_values, update_table
from lib.capacity import TinyGemma3, memorized_bits, random_sequences, train_to_memorize, trainable_parameters
from lib.gemma3 import GEMMA3_SHAPES, kv_cache_bytes, rope_settings, shape_of
from lib.memorization import HeldOutLossCallback, membership_auc, read_held_out_loss
from lib.representations import linear_cka


def tiny(layers=6, window=4, seed=0, layer_types=None):
    """A random Gemma 3 of `layers` layers (every 6th global unless `layer_types` says otherwise)."""
    torch.manual_seed(seed)
    config = Gemma3TextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=2,
                              num_key_value_heads=1, head_dim=16, vocab_size=100, sliding_window=window,
                              max_position_embeddings=128, layer_types=layer_types)
    return Gemma3ForCausalLM(config).eval()


def test_the_published_pattern_and_rope_are_read_from_a_config():
    from transformers import AutoConfig

    from lib.model import resolve_model

    real = AutoConfig.from_pretrained(resolve_model("gemma-3-270m").path_or_id)  # the embedded model's own
    assert shape_of(real).layer_types() == list(real.layer_types) == GEMMA3_SHAPES["270M"].layer_types()
    assert rope_settings(real) == {"full_attention": (1e6, 1.0), "sliding_attention": (1e4, 1.0)}
    assert GEMMA3_SHAPES["27B"].layer_types().count("full_attention") == 10


@pytest.mark.parametrize("tokens", [3, 4, 12])
def test_the_kv_cache_formula_equals_what_transformers_keeps(tokens):
    model = tiny()
    ids = torch.randint(0, 100, (1, tokens))
    assert A.cache_bytes(model, ids) == kv_cache_bytes(shape_of(model.config), tokens, bytes_per_value=4)
    kinds = A.layer_kinds(model)
    assert A.cached_tokens(kinds, 4, tokens) * 2 * 16 * 4 == A.cache_bytes(model, ids)
    everywhere = kv_cache_bytes(shape_of(model.config), tokens, 4, ["full_attention"] * 6)
    assert everywhere == 6 * tokens * 2 * 16 * 4


def test_uniform_attention_gives_the_exact_distance_and_entropy():
    model = tiny(layers=1, window=4, layer_types=["full_attention"])
    with torch.no_grad():
        model.model.layers[0].self_attn.q_proj.weight.zero_()  # equal scores: uniform over visible keys
    length = 10
    stats = A.attention_statistics(model, torch.randint(0, 100, (1, length)))
    expected_distance = sum(i / 2 for i in range(length)) / length
    expected_entropy = sum(math.log2(i + 1) for i in range(length)) / length
    assert stats[0].mean_distance == pytest.approx(expected_distance, rel=1e-5)
    assert stats[0].entropy_bits == pytest.approx(expected_entropy, rel=1e-5)


def test_a_span_change_moves_only_the_mask_and_refuses_padding():
    model = tiny()
    ids = torch.randint(0, 100, (1, 12))
    with torch.no_grad():
        base = model(ids).logits
        with A.attention_span(model, {5: 12}):           # a window as long as the text: nothing hidden
            assert torch.allclose(model(ids).logits, base, atol=1e-6)
        with A.attention_span(model, {5: 4}):
            windowed = model(ids).logits
        assert not torch.allclose(windowed, base, atol=1e-4)
        assert torch.allclose(windowed[:, :4], base[:, :4], atol=1e-6)  # the first 4 queries saw everything
        with A.eager_attention(model), A.attention_span(model, {5: 4}):
            assert torch.allclose(model(ids).logits, windowed, atol=1e-5)
        with A.attention_span(model, A.spans_for(A.layer_kinds(model), make_local_global=[0, 1, 2, 3, 4])):
            opened = model(ids).logits
        assert not torch.allclose(opened, base, atol=1e-4)
        assert model.model.layers[5].self_attn.sliding_window is None  # restored after the block
        with pytest.raises(ValueError, match="unpadded"), A.attention_span(model, {5: 4}):
            model(ids, attention_mask=torch.tensor([[0, 0] + [1] * 10]))
    with pytest.raises(ValueError, match="not of the kind"):
        A.spans_for(A.layer_kinds(model), make_global_local=[0], window=4)


def test_adapter_spectra_equal_the_svd_of_the_full_update():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny(layers=2), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"]))
    for module in model.modules():
        if hasattr(module, "lora_B") and "default" in module.lora_B:
            torch.nn.init.normal_(module.lora_B["default"].weight)
    layer = model.base_model.model.model.layers[1].self_attn.q_proj
    full = layer.scaling["default"] * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
    assert torch.allclose(update_singular_values(layer), torch.linalg.svdvals(full)[:4], rtol=1e-4, atol=1e-6)
    rows = update_table(model, modules=("q_proj", "down_proj"), top_k=2)
    assert len(rows) == 4 and all(1 <= r["effective_rank"] <= 4 and 1 <= r["stable_rank"] <= 4 for r in rows)
    equal = torch.ones(8)
    assert effective_rank(equal) == pytest.approx(8) and stable_rank(equal) == pytest.approx(8)
    assert energy_top(torch.tensor([3.0, 4.0]), 1) == pytest.approx(16 / 25)
    assert effective_rank(torch.tensor([1.0, 0.0, 0.0])) == pytest.approx(1)


def test_linear_cka_ignores_rotation_and_scale_but_not_a_new_geometry():
    x = torch.randn(200, 16)
    rotation, _ = torch.linalg.qr(torch.randn(16, 16))
    assert linear_cka(x, 3 * x @ rotation) == pytest.approx(1.0)
    assert linear_cka(x, torch.randn(200, 16)) < 0.3
    with pytest.raises(ValueError, match="same items"):
        linear_cka(x, x[:10])


def test_membership_auc_counts_ties_half():
    assert membership_auc([0.1, 0.2], [0.3, 0.4]) == 1.0
    assert membership_auc([0.5], [0.5]) == 0.5
    assert membership_auc([0.9, 0.1], [0.5]) == 0.5
    with pytest.raises(ValueError):
        membership_auc([], [1.0])


def test_random_sequences_are_bos_then_uniform_tokens():
    alphabet = torch.tensor([7, 11, 13])
    sequences = random_sequences(500, 6, alphabet, bos=2, seed=0)
    assert sequences.shape == (500, 7) and (sequences[:, 0] == 2).all()
    assert set(sequences[:, 1:].unique().tolist()) == {7, 11, 13}
    assert torch.equal(sequences, random_sequences(500, 6, alphabet, bos=2, seed=0))


def test_a_small_model_memorizes_random_sequences_and_an_untrained_one_does_not():
    spec = TinyGemma3(hidden_size=16, vocab=16)
    sequences = random_sequences(8, 8, 16, bos=16, seed=0)  # 8 x 8 x 4 = 256 bits
    untrained = memorized_bits(spec.build(0), sequences, 16)
    assert untrained < 0.1 * 256
    result = train_to_memorize(spec.build(0), sequences, 16, steps=150, learning_rate=1e-2, batch_size=8)
    assert result.memorized_bits > 0.5 * result.dataset_bits == 128
    assert result.parameters == trainable_parameters(spec.build(0)) and result.curve[0][0] == 0


def test_gradient_norms_and_held_out_loss_are_recorded_per_step(tiny_source, tmp_path):
    from lib.training import GradientNormCallback, load_for_training, read_gradient_norms, train

    spec = tiny_run(tiny_source, rank=4, max_steps=4, save_steps=100)
    model, tokenizer = load_for_training(spec)
    records = code_records(6)
    train(model, tokenizer, records, spec, tmp_path, "cpu", resume=False,
          extra_callbacks=[GradientNormCallback(tmp_path, every=2),
                           HeldOutLossCallback(tmp_path, tokenizer, {"train": records[:2], "test": records[4:]}, 2)])
    norms = read_gradient_norms(tmp_path)
    assert [r["step"] for r in norms] == [2, 4]
    assert set(norms[0]["norms"]) == {0, 1} and all(v > 0 for v in norms[0]["norms"].values())
    held = read_held_out_loss(tmp_path)
    assert [r["step"] for r in held] == [0, 2, 4] and held[-1]["train"] < held[0]["train"]


def test_span_cost_scores_blocks_past_the_window_and_counts_the_cache_it_saves():
    model = tiny()  # layer 5 global, window 4
    blocks = torch.randint(0, 100, (2, 12))
    as_built = A.span_cost(model, {}, 4, blocks=blocks)
    assert as_built["kv_saved_share"] == 0 and as_built["tokens"] == 12 and as_built["sequences"] == 2
    windowed = A.span_cost(model, {5: 4}, 4, blocks=blocks)
    assert windowed["loss"] != pytest.approx(as_built["loss"], abs=1e-6)
    # all six layers keep 3 tokens after windowing; before, the global one kept all 12
    assert windowed["kv_saved_share"] == pytest.approx(1 - (6 * 3) / (5 * 3 + 12))
    assert A.span_cost(model, {5: 12}, 4, blocks=blocks)["loss"] == pytest.approx(as_built["loss"], abs=1e-5)
    opened = A.span_cost(model, A.spans_for(A.layer_kinds(model), make_local_global=[0]), 4, blocks=blocks)
    assert opened["kv_saved_share"] < 0
    with pytest.raises(ValueError, match="exactly one"):
        A.span_cost(model, {}, 4)
    with pytest.raises(ValueError, match="no scored token"):
        A.block_loss(model, blocks, from_position=11)


def test_the_pattern_saves_most_of_the_cache_at_long_context():
    from lib.gemma3 import kv_cache_comparison

    short, long = kv_cache_comparison("270M", 256), kv_cache_comparison("270M", 32_768)
    assert short["saved"] == 0  # under the window every layer keeps every token
    assert long["saved"] == pytest.approx(1 - (15 * 511 + 3 * 32_768) / (18 * 32_768))
    assert long["share_of_memory_pattern"] < long["share_of_memory_all_global"]
    assert long["KiB/token all global"] == pytest.approx(18 * 2 * 1 * 256 * 2 / 1024)
