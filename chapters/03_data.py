# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 3. Data: build, convert, validate, deduplicate, length-check, split
#
# A fine-tune is only as good as its data, and most failed runs fail on data: a malformed record
# deep in a file, an empty answer, a conversation that starts with the assistant, duplicates that
# leak the test set into training, examples silently cut at `max_seq_length`. This chapter builds
# the course's dataset and shows the checks that every dataset, yours included, passes through
# before any model loads.

# %% tags=["parameters"]
model_name = "gemma-3-270m"          # embedded alias, local folder or hub id
dataset_dir = "data/python-stdlib"   # train/val/test .jsonl or .json
run_name = "default"                 # artifacts: <output_dir>/<run_name>/
output_dir = "output"
max_seq_length = 384
course_repo = "https://github.com/gemma-trinity/gemma3-trinity-course.git"  # Colab

# %% tags=["hide-input"]
# Setup: on Colab, clone the course and install its stack; locally, run from the repository root.
import os, subprocess, sys
from pathlib import Path

if "google.colab" in sys.modules and not Path("lib").is_dir():
    course = Path.cwd() / "course"  # /content/course on Colab
    if not course.is_dir():
        subprocess.run(["git", "clone", "--depth", "1", course_repo, str(course)], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-r", str(course / "requirements.txt")], check=True)
    os.chdir(course)
os.chdir(next(p for p in [Path.cwd(), *Path.cwd().parents] if (p / "lib").is_dir()))
sys.path.insert(0, os.getcwd())

from lib.environment import quiet_library_logs

quiet_library_logs()

# %% [markdown]
# ## The default dataset: the Python standard library
#
# Real code that no one here wrote: every documented public top-level function of CPython's
# standard library becomes one conversation. The user asks for the function by its signature,
# module and docstring; the assistant answers with its source (docstring removed). The builder is
# deterministic (`lib/stdlib_dataset.py`), the built files are committed under `data/`, and the
# split is **by module**, so test functions come from modules the model never saw in training.

# %%
import json
import pandas as pd
from lib.artifacts import read_json

build_file = Path(dataset_dir) / "build-report.json"   # only built datasets have one
if build_file.exists():
    report = read_json(build_file)["report"]
    print(f"Built from Python {report['python_version']}: {report['modules_scanned']} modules, "
          f"{report['functions_seen']} top-level functions")
    rows = [{"functions": n, "outcome": f"left out: {reason}"} for reason, n in report["skipped"].items()]
    rows += [{"functions": n, "outcome": f"kept in {split}"} for split, n in report["kept"].items()]
    display(pd.DataFrame(rows))

# %% [markdown]
# One training example, as the model will see it:

# %%
from lib.data import split_files, load_records

files = split_files(dataset_dir)
train_records, train_issues = load_records(files["train"])
if train_records:
    for message in train_records[0].messages:
        print(f"--- {message['role']} ---\n{message['content']}\n")
else:  # every record is bad: the issues are the story (prepare_dataset below lists them all)
    display(pd.DataFrame([vars(issue) for issue in train_issues]))

# %% [markdown]
# ## Your own data: three formats, one internal form
#
# `lib.data` reads `.json` (an array) or `.jsonl` (one record per line) in the three common
# formats, and converts each record to a list of `{"role", "content"}` messages:

# %%
from lib.data import to_messages

ask, answer = "Reverse a string.", "s[::-1]"
formats = {
    "alpaca": {"instruction": ask, "input": "s = 'abc'", "output": answer},
    "ShareGPT": {"conversations": [{"from": "human", "value": ask}, {"from": "gpt", "value": answer}]},
    "messages": {"messages": [{"role": "user", "content": ask}, {"role": "assistant", "content": answer}]},
}
pd.DataFrame([{"format": name, "converted": to_messages(record)} for name, record in formats.items()])

# %% [markdown]
# ## Validation names every bad record
#
# Validation reads every file before any model loads and reports *all* problems, each with file,
# line, field and reason, not only the first. Here is a small file with one problem per line
# (plus one good record), of the kinds real datasets have, a `.json` array with a record left
# outside its closing bracket (which a lenient reader drops without a word), and an empty file
# (which would give zero records and no error):

# %%
from lib.artifacts import atomic_write_text
from lib.data import DataValidationError, validate_files

run_dir = Path(output_dir) / run_name
bad_lines = [
    json.dumps({"instruction": "Add two numbers.", "output": "a + b"}),
    '{"instruction": "Broken JSON", "output": "x"',
    json.dumps({"instruction": "No answer field."}),
    json.dumps({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "  "}]}),
    json.dumps({"messages": [{"role": "assistant", "content": "Me first"}, {"role": "user", "content": "?"}]}),
    json.dumps({"conversations": [{"from": "robot", "value": "beep"}]}),
]
bad_lines.append(json.dumps({"instruction": "half of a character: \ud800", "output": "x"}))
bad_file = atomic_write_text(run_dir / "examples" / "bad.jsonl", "\n".join(bad_lines) + "\n")
with open(bad_file, "ab") as f:
    f.write(b'{"instruction": "caf\xe9", "output": "latin-1, not UTF-8"}\n')
# a .json array with a record left outside it, and an empty file
outside = atomic_write_text(run_dir / "examples" / "outside.json", "[" + bad_lines[0] + "]\n" + bad_lines[0] + "\n")
empty = atomic_write_text(run_dir / "examples" / "empty.jsonl", "")
try:
    validate_files({"train": bad_file, "val": outside, "test": empty})
except DataValidationError as err:
    display(pd.DataFrame([vars(issue) for issue in err.issues]))

# %% [markdown]
# ## Prepare the course dataset
#
# `prepare_dataset` validates the three splits, removes duplicates (exact, then the same answer to
# a question that differs only in case and whitespace; across splits, so a test record that repeats
# a training record is removed from test), and leaves out records longer than `max_seq_length`
# tokens under the chat template, listing each with its token count. Every removal is counted in
# the table. Answers are compared exactly, never normalized: two code answers that differ in
# indentation or case are different programs.

# %%
from lib.data import prepare_dataset, save_prepared
from lib.model import load_tokenizer, resolve_model

tokenizer = load_tokenizer(resolve_model(model_name))  # the tokenizer only: no model weights yet
prepared = prepare_dataset(files, tokenizer, max_seq_length)
pd.DataFrame(prepared.report.table())

# %%
from lib import plots

plots.token_length_histogram(prepared.report.token_lengths, max_seq_length);

# %% [markdown]
# The records left out for length, longest first (a larger `max_seq_length` keeps them, at the
# cost of memory and time per step):

# %%
too_long = sorted(prepared.report.too_long, key=lambda row: -row[1])
pd.DataFrame(too_long[:10], columns=["record", "tokens", "split"])

# %% [markdown]
# The prepared splits go to the run folder, where chapters 04 and 06 read them:

# %%
save_prepared(prepared, run_dir / "data")  # refuses an empty split before writing anything
summary = {split: len(rows) for split, rows in prepared.records.items()}
print(f"wrote {run_dir / 'data'}: {summary}, as one set with a manifest of digests (a set mixed from two runs "
      "is refused when read)")

# %% [markdown]
# ## Summary
#
# The table above is the whole story of this dataset: how many records each split read, how many
# were duplicates, how many were too long for `max_seq_length`, and how many remain. Nothing
# was dropped without a count.
