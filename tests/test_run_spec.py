import json

import pytest
import torch

from lib.run_spec import FIELD_SECTION, RunSpec, TrainingConfig


def test_a_field_is_changed_by_name_in_whichever_part_holds_it():
    spec = RunSpec.of("12B", rank=32, max_seq_length=2048, backend="peft", compute_dtype="float32")
    assert (spec.model, spec.adapter.rank, spec.optimisation.max_seq_length) == ("12B", 32, 2048)
    assert (spec.loading.backend, spec.loading.compute_dtype) == ("peft", "float32")
    assert spec.replace(rank=8).adapter.rank == 8 and spec.adapter.rank == 32  # frozen: a new spec
    assert spec.replace(target_modules=["q_proj"]).adapter.target_modules == ("q_proj",)
    with pytest.raises(ValueError, match=r"unknown run spec field\(s\) \['rnak'\]"):
        spec.replace(rnak=8)


def test_field_names_are_unique_across_the_parts():
    from dataclasses import fields

    from lib.run_spec import SECTIONS

    names = [f.name for cls in SECTIONS.values() for f in fields(cls)]
    assert len(names) == len(set(names)) == len(FIELD_SECTION)


def test_json_round_trip():
    spec = RunSpec.of("gemma-3-270m", rank=16, use_dora=False, target_modules=("q_proj", "v_proj"), optim="adamw_8bit",
                      gradient_checkpointing="off", precision="nf4")
    assert RunSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    with pytest.raises(ValueError, match="unknown run spec part"):
        RunSpec.from_dict({"model": "x", "optimiser": {}})


def test_the_backend_default_checkpointing_follows_a_change_of_backend():
    unsloth = RunSpec.of("12B")
    assert unsloth.loading.checkpointing == "offloaded" and unsloth.loading.loss == "chunked"
    peft = unsloth.replace(backend="peft")
    assert peft.loading.checkpointing == "standard" and peft.loading.loss == "full"
    assert unsloth.replace(gradient_checkpointing="off", backend="peft").loading.checkpointing == "off"


def test_the_optimizer_default_depends_on_the_device_and_a_choice_wins():
    assert TrainingConfig().optimizer_for("cuda") == "adamw_8bit"
    assert TrainingConfig().optimizer_for("cpu") == "adamw_torch"
    assert TrainingConfig(optim="paged_adamw_8bit").optimizer_for("cpu") == "paged_adamw_8bit"


@pytest.mark.parametrize("field, value", [("backend", "jax"), ("precision", "nf3"), ("compute_dtype", "fp8"),
                                          ("gradient_checkpointing", "some"), ("dora_implementation", "triton"),
                                          ("optim", "sgd"), ("batch_size", 0), ("save_steps", -1), ("rank", 0)])
def test_a_bad_value_is_refused_naming_its_field(field, value):
    with pytest.raises(ValueError, match=field):
        RunSpec.of(**{field: value})


def test_the_loader_refuses_what_it_cannot_load():
    from lib.training import compute_dtype_of

    assert compute_dtype_of(RunSpec.of(precision="fp32", compute_dtype="float32"), "cpu") == torch.float32
    with pytest.raises(ValueError, match="holds the base in bfloat16, but the compute dtype is float32"):
        compute_dtype_of(RunSpec.of(precision="bf16", compute_dtype="float32"), "cpu")
    with pytest.raises(ValueError, match="int8 is for memory estimates"):
        compute_dtype_of(RunSpec.of(precision="int8", compute_dtype="float32"), "cpu")


def test_one_spec_is_both_estimated_and_described():
    from lib.memory import estimate, gpu_run

    spec = gpu_run("google/gemma-3-12b-it", rank=32)
    assert spec.describe().startswith("google/gemma-3-12b-it nf4-dq r=32 DoRA [all linear] seq=4096 batch=1x1")
    assert estimate(spec) == estimate(gpu_run("12B", rank=32))  # the size is read from the model id
