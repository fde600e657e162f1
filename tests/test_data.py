import json

import pytest

from lib.data import (DataValidationError, Record, conversation_lengths, deduplicate, load_prepared, load_records,
                      prepare_dataset, save_prepared, split_files, to_messages, tokenize_conversation, validate_files)


def write(path, lines):
    path.write_bytes(b"\n".join(l if isinstance(l, bytes) else l.encode() for l in lines) + b"\n")
    return path


def good(i=0):
    return json.dumps({"instruction": f"Task {i}", "output": f"Answer {i}"})


# ---------------------------------------------------------------- formats

def test_alpaca_with_input_and_system():
    messages = to_messages({"instruction": "Do it", "input": "data", "output": "done", "system": "Be brief"})
    assert messages == [{"role": "system", "content": "Be brief"}, {"role": "user", "content": "Do it\n\ndata"},
                        {"role": "assistant", "content": "done"}]


def test_sharegpt_from_value_and_role_content_agree():
    a = to_messages({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]})
    b = to_messages({"conversations": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})
    c = to_messages({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})
    assert a == b == c == [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]


def test_json_array_records_get_their_line_numbers(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('[\n  {"instruction": "a", "output": "b"},\n\n  {"instruction": "c"},\n  {"instruction": "d", "output": "e"}\n]')
    records, issues = load_records(path)
    assert [r.line for r in records] == [2, 5]
    assert [(i.line, i.field, i.reason) for i in issues] == [(4, "output", "missing field")]


# ---------------------------------------------------------------- each validation error, all reported

@pytest.mark.parametrize("line, field, reason", [
    ('{"instruction": "x", "output": ', "-", "bad JSON"),
    (json.dumps({"instruction": "x"}), "output", "missing field"),
    (json.dumps({"messages": [{"role": "user"}, {"role": "assistant", "content": "a"}]}), "messages[0].content", "missing field"),
    (json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": " \n"}]}),
     "messages[1].content", "empty assistant turn"),
    (json.dumps({"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}]}),
     "messages[0].role", "wrong role order"),
    (json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "user", "content": "q2"}]}),
     "messages[1].role", "wrong role order"),
    (json.dumps({"messages": [{"role": "user", "content": "q"}]}), "messages[0].role", "must end with an assistant"),
    (json.dumps({"conversations": [{"from": "robot", "value": "x"}]}), "conversations[0].from", "unknown role"),
    (json.dumps({"text": "no known fields"}), "-", "no 'messages'"),
    (json.dumps(["a list"]), "-", "expected an object"),
    (b'{"instruction": "caf\xe9", "output": "x"}', "-", "not UTF-8"),
])
def test_each_error_names_file_line_field_and_reason(tmp_path, line, field, reason):
    path = write(tmp_path / "d.jsonl", [good(1), line, good(2)])
    with pytest.raises(DataValidationError) as err:
        validate_files({"train": path})
    [issue] = err.value.issues
    assert (issue.file, issue.line, issue.field) == (str(path), 2, field)
    assert reason in issue.reason
    assert f"{path}:2: {field}:" in str(err.value)


def test_every_bad_record_is_reported_not_only_the_first(tmp_path):
    train = write(tmp_path / "train.jsonl", [good(0), "{", json.dumps({"instruction": "x"}), good(1), "[1"])
    val = write(tmp_path / "val.jsonl", [json.dumps({"messages": []})])
    with pytest.raises(DataValidationError) as err:
        validate_files({"train": train, "val": val})
    assert [(i.file.split("/")[-1], i.line) for i in err.value.issues] == [
        ("train.jsonl", 2), ("train.jsonl", 3), ("train.jsonl", 5), ("val.jsonl", 1)]


def test_unsupported_and_missing_files(tmp_path):
    with pytest.raises(ValueError, match="unsupported file type '.csv'"):
        load_records(write(tmp_path / "d.csv", [good()]))
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_records(tmp_path / "nope.jsonl")
    write(tmp_path / "train.jsonl", [good()])
    with pytest.raises(FileNotFoundError, match="no val.jsonl or val.json"):
        split_files(tmp_path)


# ---------------------------------------------------------------- dedup, length, prepare

def rec(user, answer, line=1):
    return Record([{"role": "user", "content": user}, {"role": "assistant", "content": answer}], "f", line)


def test_dedup_exact_normalized_and_across_splits():
    splits = {"train": [rec("Add a, b", "a + b"), rec("Add a, b", "a + b"), rec("add  A, b", "a + b")],
              "val": [rec("Mul", "a * b")],
              "test": [rec("Add a, b", "a + b"), rec("Sub", "a - b")]}
    kept, removed = deduplicate(splits)
    assert [len(kept[s]) for s in ("train", "val", "test")] == [1, 1, 1]
    assert removed["exact"] == {"train": 1, "test": 1}
    assert removed["normalized"] == {"train": 1}  # the same answer to the same question, spelled otherwise
    assert kept["test"][0].reference == "a - b"


def test_code_answers_that_differ_in_indentation_or_case_are_kept():
    """Python reads `def f():\n  return X` and `def f():\n    return x` as different programs."""
    splits = {"train": [rec("Write f", "def f():\n    return x"), rec("write f", "def f():\n  return x"),
                        rec("Write f", "def f():\n    return X")], "val": [], "test": []}
    kept, removed = deduplicate(splits)
    assert len(kept["train"]) == 3 and not removed["normalized"] and not removed["exact"]


def test_prepare_counts_every_removal_and_reports_token_counts(tmp_path, tokenizer):
    long_answer = "x = 1\n" * 60
    for split in ("train", "val", "test"):
        write(tmp_path / f"{split}.jsonl", [good(f"{split}0"), good(f"{split}0"),
                                             json.dumps({"instruction": f"{split} long", "output": long_answer}),
                                             good(f"{split}1")])
    prepared = prepare_dataset(split_files(tmp_path), tokenizer, max_seq_length=64)
    report = prepared.report
    for row in report.table():
        assert row["read"] == row["exact duplicates"] + row["normalized duplicates"] + row["over 64 tokens"] + row["kept"]
        assert row["kept"] == 2
    tokens = len(tokenize_conversation(tokenizer, [{"role": "user", "content": "train long"},
                                                   {"role": "assistant", "content": long_answer}])["input_ids"])
    assert (f"{tmp_path / 'train.jsonl'}:3", tokens, "train") in report.too_long
    assert all(n <= 64 for lengths in report.token_lengths.values() for n in lengths)


def test_prepared_splits_round_trip(tmp_path, tokenizer):
    for split in ("train", "val", "test"):
        write(tmp_path / f"{split}.jsonl", [good(f"{split}{i}") for i in range(3)])
    prepared = prepare_dataset(split_files(tmp_path), tokenizer, 128)
    save_prepared(prepared, tmp_path / "out")
    assert load_prepared(tmp_path / "out") == prepared.records
    with pytest.raises(FileNotFoundError, match="run chapter 03_data first"):
        load_prepared(tmp_path / "empty")


def test_a_failed_save_keeps_the_previous_set_and_a_mixed_set_is_refused(tmp_path, tokenizer, monkeypatch):
    from pathlib import Path

    for split in ("train", "val", "test"):
        write(tmp_path / f"{split}.jsonl", [good(f"{split}{i}") for i in range(3)])
    first = prepare_dataset(split_files(tmp_path), tokenizer, 128)
    save_prepared(first, tmp_path / "out")
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    second = prepare_dataset(split_files(tmp_path), tokenizer, 128)
    second.records["train"] = second.records["train"][:1]
    real_write = Path.write_text

    def full_disk(self, *args, **kwargs):
        if self.name == "test.jsonl":
            raise OSError(28, "No space left on device")
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full_disk)
    with pytest.raises(OSError, match="No space left"):
        save_prepared(second, tmp_path / "out")
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before  # the old set, whole
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no staging left
    # another run's split copied over this one's: refused, it could put test records in training
    (tmp_path / "out" / "train.jsonl").write_bytes((tmp_path / "out" / "test.jsonl").read_bytes())
    with pytest.raises(ValueError, match="train.jsonl does not match .*manifest.json"):
        load_prepared(tmp_path / "out")
    second.records["val"] = []
    with pytest.raises(ValueError, match="no records left in split.s. val"):  # checked before anything is written
        save_prepared(second, tmp_path / "other")
    assert not (tmp_path / "other").exists()


# ---------------------------------------------------------------- what users' files do

def test_a_json_array_is_read_in_one_pass_and_its_ends_are_checked(tmp_path):
    import time

    path = tmp_path / "d.json"
    path.write_text('[{"instruction": "a", "output": "b"}]\n{"instruction": "c", "output": "d"}\n')
    records, issues = load_records(path)
    assert len(records) == 1 and [(i.line, i.reason[:30]) for i in issues] == [(2, "text after the array's closing")]
    path.write_text('[{"instruction": "a", "output": "b"},\n {"instruction": "c", "output": "d"}\n')
    assert [i.reason for i in load_records(path)[1]] == ["the array is not closed: no ']' at the end"]
    path.write_text('{"instruction": "a", "output": "b"}')
    [issue] = load_records(path)[1]
    assert issue.file == str(path) and "must hold an array" in issue.reason
    # linear: 8,000 records read in about the time of the same as .jsonl (was 26 s, quadratic)
    rows = [good(i) for i in range(8000)]
    path.write_text("[\n" + ",\n".join(rows) + "\n]")
    started = time.monotonic()
    records, issues = load_records(path)
    assert len(records) == 8000 and not issues and records[-1].line == 8001
    assert time.monotonic() - started < 5


def test_a_byte_order_mark_is_accepted_and_empty_files_are_refused(tmp_path):
    jsonl = tmp_path / "bom.jsonl"
    jsonl.write_bytes(b"\xef\xbb\xbf" + good(1).encode() + b"\n")
    assert len(load_records(jsonl)[0]) == 1
    array = tmp_path / "bom.json"
    array.write_bytes(b"\xef\xbb\xbf[" + good(1).encode() + b"]")
    assert len(load_records(array)[0]) == 1
    for name, content in (("empty.jsonl", b""), ("empty.json", b"[]"), ("blank.jsonl", b"\n\n")):
        (tmp_path / name).write_bytes(content)
        records, [issue] = load_records(tmp_path / name)
        assert not records and (issue.file, issue.line, issue.reason) == (str(tmp_path / name), 1,
                                                                         "the file holds no records")


def test_both_json_and_jsonl_for_a_split_is_refused(tmp_path):
    for split in ("train", "val", "test"):
        write(tmp_path / f"{split}.jsonl", [good()])
    write(tmp_path / "train.json", ["[" + good() + "]"])
    with pytest.raises(ValueError, match="both train.jsonl and train.json"):
        split_files(tmp_path)


def test_a_lone_surrogate_is_an_issue_with_file_line_field(tmp_path):
    path = write(tmp_path / "d.jsonl", [good(0), '{"instruction": "x\\ud800", "output": "y"}'])
    with pytest.raises(DataValidationError) as err:
        validate_files({"train": path})
    [issue] = err.value.issues
    assert (issue.line, issue.field) == (2, "instruction") and "not valid Unicode" in issue.reason


def test_conversation_lengths_refuse_a_set_that_does_not_fit(tokenizer):
    short = Record([{"role": "user", "content": "add"}, {"role": "assistant", "content": "a + b"}], "f", 1)
    long = Record([{"role": "user", "content": "add " * 50}, {"role": "assistant", "content": "a + b"}], "f", 2)
    lengths = conversation_lengths(tokenizer, {"train": [short], "test": [short, long]}, 256)
    assert lengths["test"][0] == lengths["train"][0] < lengths["test"][1] <= 256
    with pytest.raises(ValueError, match=r"1 conversations exceed max_seq_length=40; the longest is test record 1"):
        conversation_lengths(tokenizer, {"train": [short], "test": [short, long]}, 40)
