import json

import pytest

from lib.ghost_dataset import build_dataset, load_examples, text_messages, vision_messages
from lib.sql_eval import structure


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ghost")
    return folder, build_dataset(folder, examples=40, seed=1, screens_per_schema=4, ocr=False)


def test_examples_split_by_schema_with_exact_labels(dataset):
    folder, examples = dataset
    assert len(examples) == 40 and {e.split for e in examples} == {"train", "val", "test"}
    schemas_by_split = {split: {e.schema_seed for e in examples if e.split == split} for split in ("train", "val", "test")}
    assert not (schemas_by_split["train"] & schemas_by_split["test"]) and not (schemas_by_split["val"] & schemas_by_split["test"])
    for example in examples:
        created = structure(example.ddl)
        assert sorted(created.columns) == sorted(example.tables)
        assert (folder / example.image).stat().st_size > 1000
    assert load_examples(folder) == examples


def test_same_seed_same_dataset(dataset, tmp_path):
    folder, examples = dataset
    again = build_dataset(tmp_path, examples=40, seed=1, screens_per_schema=4, ocr=False)
    assert again == examples
    assert (tmp_path / "examples.jsonl").read_text() == (folder / "examples.jsonl").read_text()


def test_a_built_set_is_reused_and_a_failed_build_keeps_the_previous_one(tmp_path, monkeypatch):
    import lib.ghost_dataset as ghost_dataset

    first = build_dataset(tmp_path / "set", examples=6, seed=5, screens_per_schema=2, ocr=False)
    before = (tmp_path / "set" / "examples.jsonl").stat().st_mtime_ns

    def no_browser(*args, **kwargs):
        raise RuntimeError("Chromium crashed")

    monkeypatch.setattr(ghost_dataset, "screenshot", no_browser)
    assert build_dataset(tmp_path / "set", examples=6, seed=5, screens_per_schema=2, ocr=False) == first  # reused
    assert (tmp_path / "set" / "examples.jsonl").stat().st_mtime_ns == before
    with pytest.raises(RuntimeError, match="Chromium crashed"):  # other settings: a rebuild, which fails
        build_dataset(tmp_path / "set", examples=6, seed=6, screens_per_schema=2, ocr=False)
    assert load_examples(tmp_path / "set") == first  # the previous set is whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]  # no staging folder left behind


def test_text_of_the_dom_or_of_the_pixels(dataset):
    from lib.ghost_dataset import screen_of

    folder, examples = dataset
    assert screen_of(examples[0], "dom") == examples[0].screen_text
    with pytest.raises(ValueError, match="built with ocr=False"):
        screen_of(examples[0], "ocr")
    with pytest.raises(ValueError, match="unknown text source 'html'"):
        text_messages(examples[0], "html")


def test_messages_put_the_image_in_the_user_turn(dataset):
    folder, examples = dataset
    vision = vision_messages(examples[0], folder)
    assert vision[0]["role"] == "user" and vision[0]["content"][0]["type"] == "image"
    assert vision[1]["content"][0]["text"] == examples[0].ddl
    text = text_messages(examples[0])
    assert examples[0].screen_text in text[0]["content"] and text[1]["content"] == examples[0].ddl


def test_bad_dataset_files_name_line_and_field(dataset, tmp_path):
    folder, examples = dataset
    lines = (folder / "examples.jsonl").read_text().splitlines()
    (tmp_path / "images").mkdir()
    broken = json.loads(lines[1])
    broken["split"] = "holdout"
    (tmp_path / "examples.jsonl").write_text(lines[0].replace('"image": "', f'"image": "{folder}/') + "\n"
                                             + json.dumps(broken) + "\n")
    with pytest.raises(ValueError, match=r"examples.jsonl:2: field 'split' is 'holdout'"):
        load_examples(tmp_path)
    (tmp_path / "examples.jsonl").write_text("{not json\n")
    with pytest.raises(ValueError, match=r"examples.jsonl:1: not JSON"):
        load_examples(tmp_path)
    with pytest.raises(ValueError, match="fractions must be 3 numbers"):
        build_dataset(tmp_path, fractions=(0.5, 0.5, 0.5))


def test_text_records_train_on_the_ddl_only(dataset, tokenizer):
    from lib.data import tokenize_conversation
    from lib.ghost_dataset import text_records

    folder, examples = dataset
    records = text_records(examples, "test", folder)
    assert len(records) == sum(e.split == "test" for e in examples) > 0
    first = next(e for e in examples if e.split == "test")
    assert records[0].reference == first.ddl and records[0].line == examples.index(first) + 1
    tokens = tokenize_conversation(tokenizer, records[0].messages)
    answer = [t for t, m in zip(tokens["input_ids"], tokens["assistant_masks"]) if m]
    assert tokenizer.decode(answer).strip().startswith(first.ddl.strip())
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        text_records(examples, "dev", folder)


def test_few_schemas_still_give_every_split(tmp_path):
    examples = build_dataset(tmp_path, examples=12, seed=2, screens_per_schema=2, ocr=False)  # 6 schemas
    assert {split: len({e.schema_seed for e in examples if e.split == split}) for split in ("train", "val", "test")} \
        == {"train": 4, "val": 1, "test": 1}
