import pytest
import torch

from lib.quantization import (BLOCKSIZE, absmax_int4, code_levels, normalized_by_block, quantize_dequantize,
                              relative_error, stored_bits, stored_bytes, weight_memory_gib)


@pytest.fixture
def gaussian():
    torch.manual_seed(0)
    return torch.randn(256, 128) * 0.02


def test_int4_values_lie_on_15_levels_per_block_within_half_a_step(gaussian):
    approx = absmax_int4(gaussian)
    blocks, original = approx.reshape(-1, BLOCKSIZE), gaussian.reshape(-1, BLOCKSIZE)
    absmax = original.abs().amax(dim=1, keepdim=True)
    levels = blocks / absmax * 7
    assert torch.allclose(levels, levels.round(), atol=1e-4)
    assert (blocks - original).abs().le(absmax / 14 + 1e-7).all()
    with pytest.raises(ValueError, match="blocks of 64"):
        absmax_int4(torch.zeros(10))


def test_nf4_beats_int4_and_fp4_on_normal_weights(gaussian):
    errors = {m: relative_error(gaussian, quantize_dequantize(gaussian, m)) for m in ("nf4", "fp4", "int4")}
    assert errors["nf4"] < errors["int4"] and errors["nf4"] < errors["fp4"]
    assert 0 < errors["nf4"] < 0.2
    with pytest.raises(ValueError, match="unknown method"):
        quantize_dequantize(gaussian, "int3")


def test_stored_bits_count_every_tensor_bitsandbytes_keeps(gaussian):
    plain, double = stored_bits(gaussian, double_quant=False), stored_bits(gaussian, double_quant=True)
    assert plain["codes"] == double["codes"] == 4
    assert plain["absmax"] == pytest.approx(32 / BLOCKSIZE)  # one fp32 absmax per block
    assert double["absmax"] == pytest.approx(8 / BLOCKSIZE)  # stored in 8 bits
    assert double["total"] < plain["total"]
    assert plain["total"] == pytest.approx(sum(v for k, v in plain.items() if k != "total"))


def test_normalized_blocks_span_minus_one_to_one_and_nf4_code_has_16_levels(gaussian):
    values = normalized_by_block(gaussian)
    assert values.abs().max() == pytest.approx(1.0)
    levels = code_levels("nf4")
    assert len(levels) == 16 and levels[0] == -1 and levels[-1] == 1 and 0 in levels.tolist()


def test_stored_bytes_add_exactly_the_constants_that_get_memory_footprint_misses(tiny_source):
    from transformers import AutoConfig

    from lib.gemma3 import parameter_counts, shape_of
    from lib.lora import ALL_LINEAR_MODULES
    from lib.model import load_causal_lm

    model = load_causal_lm(tiny_source, torch.bfloat16, load_in_4bit=True, double_quant=False)
    shape = shape_of(AutoConfig.from_pretrained(tiny_source.path_or_id))
    counts = parameter_counts(shape)
    quantized = sum(counts[m] for m in ALL_LINEAR_MODULES)
    layers = shape.num_hidden_layers * len(ALL_LINEAR_MODULES)
    # one fp32 absmax per block of 64, and each layer's 16-entry fp32 code table
    constants = quantized // BLOCKSIZE * 4 + layers * 16 * 4
    assert stored_bytes(model) - model.get_memory_footprint() == constants
    assert stored_bytes(model) / 2**30 == pytest.approx(weight_memory_gib(counts, 4 + 32 / BLOCKSIZE), rel=1e-3)
