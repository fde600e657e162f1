"""FSDP2 + QLoRA on a CPU: the tiny Gemma 3's NF4 base and a Trinity adapter sharded over two gloo
processes by torch's fully_shard (`lib.fsdp`), against one process on the same global batch; and
the accelerate launch that does the same on GPUs, checked against the installed accelerate."""

import pytest

from helpers import LIBRARY_NOTES, stderr_into
from lib.distributed import launch_command
from lib.fsdp import compare_with_one_process, decoder_layers

# Measured within 1e-7 relative (2026-12-03, AMD EPYC, torch 2.13 CPU, gloo): the same float32 sums
# in another order (two half-batches, then an average).
LOSS_TOLERANCE = 1e-5  # relative, per step
ADAPTER_TOLERANCE = 1e-4  # ||a - b|| / ||b|| per tensor: AdamW's first steps scale tiny gradient differences up
PROCESSES = 2


@pytest.fixture(scope="module")
def check(tiny_source, tmp_path_factory):
    """The check's rows, and what its spawned processes wrote to stderr (a chapter shows that)."""
    from lib.adapter_runs import ROOT
    from lib.data import split_files, validate_files
    from lib.model import load_tokenizer

    records = validate_files(split_files(ROOT / "data" / "python-stdlib"))["train"]
    stderr = tmp_path_factory.mktemp("fsdp") / "stderr.txt"
    with stderr_into(stderr):
        rows = compare_with_one_process(tiny_source.path_or_id, records, load_tokenizer(tiny_source),
                                        processes=PROCESSES, steps=3, global_batch=4, length=32, rank=8)
    return rows, stderr.read_text()


@pytest.fixture(scope="module")
def rows(check):
    return check[0]


def test_the_spawned_processes_do_not_print_the_libraries_import_notes(check):
    assert not [note for note in LIBRARY_NOTES if note in check[1]], check[1]


def by(rows, storage, processes):
    return next(r for r in rows if r["storage"] == storage and r["processes"] == processes)


@pytest.mark.parametrize("storage", ["uint8", "float32"])
def test_a_sharded_trinity_trains_what_one_process_trains(rows, storage):
    one, sharded = by(rows, storage, 1)["losses"], by(rows, storage, PROCESSES)["losses"]
    assert len(one) == 3 and one[-1] < one[0]  # it trains
    assert sharded == pytest.approx(one, rel=LOSS_TOLERANCE)
    assert by(rows, storage, PROCESSES)["largest_relative_difference"] <= LOSS_TOLERANCE


@pytest.mark.parametrize("storage", ["uint8", "float32"])
def test_each_process_holds_its_share_of_the_4bit_base_and_the_adapter(rows, storage):
    sizes = by(rows, storage, PROCESSES)["bytes"]
    for kind in ("4-bit base", "adapter"):
        whole, mine = sizes[kind]["whole model"], sizes[kind]["this process"]
        assert whole > 0 and mine <= whole / PROCESSES * 1.01, (kind, mine, whole)  # the silent failure: mine == whole
    assert by(rows, storage, 1)["bytes"]["4-bit base"]["this process"] == sizes["4-bit base"]["whole model"]


@pytest.mark.parametrize("storage", ["uint8", "float32"])
def test_after_training_the_shards_are_gathered_into_one_adapter(rows, storage):
    one, sharded = by(rows, storage, 1), by(rows, storage, PROCESSES)
    # every process computes one digest of the gathered adapter: the same on all of them
    assert len(sharded["digests_by_process"]) == PROCESSES and len(set(sharded["digests_by_process"])) == 1
    # rank 0 saved the whole adapter (names and shapes of the one-process one; inf if shards were saved)
    assert one["adapter_relative_difference"] == 0
    assert sharded["adapter_relative_difference"] <= ADAPTER_TOLERANCE
    # the update norms read whole base weights inside `unsharded`
    assert len(sharded["update_norms"]) == len(one["update_norms"]) > 0
    assert sharded["update_norms"] == pytest.approx(one["update_norms"], rel=ADAPTER_TOLERANCE)
    # the evaluation calls the decoder below FSDP2's root unit (on an H200 that raised "mixed
    # torch.Tensor and DTensor" until it ran inside `unsharded`)
    assert sharded["test_loss"] == pytest.approx(one["test_loss"], rel=ADAPTER_TOLERANCE)


def test_the_units_are_the_decoder_layers(tiny_source):
    import torch
    from lib.model import load_causal_lm

    layers = decoder_layers(load_causal_lm(tiny_source, torch.float32))
    assert [type(layer).__name__ for layer in layers] == ["Gemma3DecoderLayer"] * 2
    with pytest.raises(ValueError, match="no decoder layer class"):
        decoder_layers(torch.nn.Linear(2, 2))


def test_the_fsdp_launch_is_what_the_installed_accelerate_runs_as_fsdp2():
    from accelerate.commands.launch import launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    command = launch_command("lib.adapter_runs", ["spec.json"], processes=PROCESSES, fsdp=True)
    launcher = command.index("accelerate.commands.launch")
    environment = prepare_multi_gpu_env(launch_command_parser().parse_args(command[launcher + 1:]))
    assert environment["ACCELERATE_USE_FSDP"] == "true" and environment["FSDP_VERSION"] == "2"
    assert environment["FSDP_AUTO_WRAP_POLICY"] == "TRANSFORMER_BASED_WRAP"
    assert environment["FSDP_STATE_DICT_TYPE"] == "SHARDED_STATE_DICT"
    one_gpu = launch_command("lib.adapter_runs", ["spec.json"], fsdp=True)
    assert "--use_fsdp" in one_gpu and "--multi_gpu" not in one_gpu


def test_an_fsdp_launch_stores_the_4bit_codes_in_the_compute_dtype_and_trains_with_torch_adamw(monkeypatch):
    """accelerate 1.15 leaves uint8 Params4bit out of FSDP2's sharding, and bitsandbytes' 8-bit
    AdamW takes no DTensors (both met on an H200): under an FSDP launch the course avoids both."""
    import torch

    from lib.fsdp import quant_storage_for_launch
    from lib.run_spec import TrainingConfig

    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    assert quant_storage_for_launch(torch.bfloat16) == torch.uint8
    assert TrainingConfig().optimizer_for("cuda") == "adamw_8bit"
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # as accelerate's launcher sets it
    assert quant_storage_for_launch(torch.bfloat16) == torch.bfloat16
    assert TrainingConfig().optimizer_for("cuda") == "adamw_torch"
    assert TrainingConfig(optim="adamw_8bit").optimizer_for("cuda") == "adamw_8bit"  # an explicit choice stands
