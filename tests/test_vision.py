"""The vision path on the tiny random Gemma3ForConditionalGeneration: it tests the plumbing (processor,
labels, LoRA on both towers, a training step, saving, reloading, generation), not quality."""

import pytest
import torch

from helpers import COMPUTE_DTYPE

from lib.ghost_dataset import INSTRUCTION, build_dataset
from lib.vision import (Conversations, VisionCollator, adapted_towers, build_tiny_random, collator_for,
                        generate_ddl, language_and_vision_targets, load_vision_for_inference, load_vision_model,
                        preset, steps_for)


@pytest.fixture(scope="module")
def ghost(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ghost")
    return folder, build_dataset(folder, examples=12, seed=3, screens_per_schema=2, ocr=False)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(build_tiny_random(tmp_path_factory.mktemp("tiny-vision")))


def test_presets_follow_the_source_profiles():
    t4, full = preset("T4"), preset("24GB")
    for chosen, expected in ((t4, (False, True, 1, 2048)), (full, (True, True, 3, 4096))):
        a, o = chosen.spec.adapter, chosen.spec.optimisation
        assert (a.use_dora, a.use_rslora, chosen.epochs, o.max_seq_length) == expected
        assert chosen.spec.loading.load_in_4bit and a.rank == 64
        assert (o.batch_size, o.gradient_accumulation_steps) == (1, 4)
    assert preset("T4", epochs=2).epochs == 2 and preset("T4", rank=16).spec.adapter.rank == 16
    assert steps_for(full, 10) == 3 * 3  # ceil(10 / (1 x 4)) steps per epoch
    with pytest.raises(ValueError, match="unknown vision preset"):
        preset("A100")


def test_targets_select_both_towers_and_nothing_else():
    import re

    pattern = re.compile(language_and_vision_targets())
    assert pattern.fullmatch("model.language_model.layers.0.self_attn.q_proj")
    assert pattern.fullmatch("model.language_model.layers.3.mlp.down_proj")
    assert pattern.fullmatch("model.vision_tower.vision_model.encoder.layers.1.self_attn.out_proj")
    assert pattern.fullmatch("model.vision_tower.vision_model.encoder.layers.1.mlp.fc2")
    assert not pattern.fullmatch("lm_head")
    assert not pattern.fullmatch("model.multi_modal_projector.mm_soft_emb_norm")


def test_collator_puts_the_image_in_and_trains_on_the_answer_only(ghost, tiny):
    from transformers import AutoProcessor

    folder, examples = ghost
    processor = AutoProcessor.from_pretrained(tiny)
    conversations = Conversations(examples[:2], folder)
    batch = VisionCollator(processor, max_seq_length=2048)([conversations[0], conversations[1]])
    assert batch["pixel_values"].shape == (2, 3, 224, 224)
    image_id = processor.tokenizer.image_token_id
    assert (batch["input_ids"] == image_id).sum(dim=1).tolist() == [16, 16]
    assert ((batch["token_type_ids"] == 1) == (batch["input_ids"] == image_id)).all()
    for row, example in enumerate(examples[:2]):
        labels = batch["labels"][row]
        assert processor.tokenizer.decode(labels[labels != -100]) == example.ddl + "<end_of_turn>\n"
        assert not (labels[batch["attention_mask"][row] == 0] != -100).any()  # padding carries no loss
    with pytest.raises(ValueError, match="over max_seq_length=64"):
        VisionCollator(processor, max_seq_length=64)([conversations[0]])


@pytest.mark.parametrize("name", ["T4", "24GB"])
def test_a_training_step_moves_lora_on_both_towers(ghost, tiny, tmp_path, name):
    from lib.fast_dora import fast_dora_layers
    from lib.training import train_dataset

    folder, examples = ghost
    spec = preset(name, model=tiny, backend="peft", max_steps=1, batch_size=2, gradient_accumulation_steps=1,
                  warmup_steps=0, save_steps=10).spec
    model, processor = load_vision_model(spec)
    towers = adapted_towers(model)
    assert towers["language"] == 2 * 7 and towers["vision"] == 2 * 6
    assert bool(fast_dora_layers(model)) == spec.adapter.use_dora
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    train = [e for e in examples if e.split == "train"][:2]
    result = train_dataset(model, processor, Conversations(train, folder), collator_for("peft", model, processor, 2048),
                           spec, tmp_path, "cpu")
    moved = {n for n, p in model.named_parameters() if "lora_B" in n and not torch.equal(p, before[n])}
    assert any("vision_tower" in n for n in moved) and any("language_model" in n for n in moved)
    assert result.stats["steps"] == 1 and (tmp_path / "adapter" / "adapter_config.json").exists()


def test_saved_adapter_reloads_and_generates(ghost, tiny, tmp_path):
    from peft import get_peft_model_state_dict

    from lib.training import save_adapter

    folder, examples = ghost
    model, processor = load_vision_model(preset("T4", model=tiny, backend="peft").spec)
    with torch.no_grad():  # make the adapter matter: B = 0 would leave the base model's output
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    save_adapter(model, processor, tmp_path / "adapter")
    reloaded, processor = load_vision_for_inference(tiny, tmp_path / "adapter", COMPUTE_DTYPE)
    saved, loaded = get_peft_model_state_dict(model), get_peft_model_state_dict(reloaded)
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[k].float(), loaded[k].float()) for k in saved)
    base, _ = load_vision_for_inference(tiny, None, COMPUTE_DTYPE)
    images = [folder / e.image for e in examples[:3]]
    answers = generate_ddl(reloaded, processor, images, INSTRUCTION, max_new_tokens=6, batch_size=2)
    assert len(answers) == 3 and all(isinstance(a, str) and a for a in answers)
    assert generate_ddl(base, processor, images, INSTRUCTION, max_new_tokens=6, batch_size=2) != answers
    with pytest.raises(FileNotFoundError, match="no adapter_config.json"):
        load_vision_for_inference(tiny, tmp_path / "nothing", COMPUTE_DTYPE)
