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
# # 8. Ghost Architect: from a UI screenshot to its SQL schema
#
# An application screen shows its database: a form's fields are a table's columns, a required
# marker is `NOT NULL`, a dropdown of customers is a foreign key, a data table's headers are
# columns again. The source plan fine-tunes Gemma 3's vision model to read a screenshot and write
# the `CREATE TABLE` statements behind it, on 287 scraped screenshots labelled by a hosted LLM.
#
# Here nothing can be scraped and no hosted LLM reached, and a better dataset is possible: generate
# the schema first, then render screens from it. Every label is then exact by construction. This
# chapter:
#
# 1. builds the dataset: schemas across six domains, screens in four kinds and four visual styles,
#    screenshotted by headless Chromium, split by schema;
# 2. reads every screenshot back from its **pixels**, with OCR and layout analysis, into the
#    screen's text and structure, and measures what that recovers and what pixels cannot carry;
# 3. scores generated SQL for real, in a sandbox: sqlglot parses it, SQLite executes it, and tables,
#    columns, types, primary keys and foreign keys are compared with the truth;
# 4. trains the **text Ghost Architect** (screen text to DDL) with the Trinity on the embedded
#    Gemma 3 270M, once on the page's DOM text and once on OCR'd text, and measures both **end to
#    end from the screenshots**, against the base model;
# 5. runs the **vision path** (a Gemma 3 vision model with LoRA on its language *and* vision
#    layers) with the source's two training presets, on a GPU with a real checkpoint;
# 6. uses the result: a command line tool and a Streamlit app, reading screenshots offline.

# %% tags=["parameters"]
model_name = "gemma-3-270m"          # text path: embedded alias, local folder or hub id
run_name = "default"                 # artifacts: <output_dir>/<run_name>/ghost-*
output_dir = "output"
dataset_examples = 320               # screens (the source had 287)
dataset_seed = 0
screens_per_schema = 4
ocr_workers = None                   # processes reading screenshots back (None: one per CPU core)
max_steps = 60                       # each text Ghost Architect's training (one on DOM text, one on OCR text)
batch_size = 4
learning_rate = 2e-4
max_seq_length = 768                 # the longest text example is ~650 tokens (DOM or OCR)
rank = 64
alpha = 32
use_rslora = True
use_dora = True
backend = "auto"                     # "auto", "unsloth" or "peft"
compute_dtype = "auto"               # "auto" (lib.precision: measured on a CPU), "bfloat16" or "float32"
seed = 3407
eval_n = 32                          # test screenshots to generate SQL for (None: all)
max_new_tokens = 320                 # the longest true DDL is ~220 tokens
eval_batch_size = 8
vision_model = "auto"                # auto: unsloth/gemma-3-4b-it on a CUDA GPU, else the tiny random model
vision_preset = "T4"                 # "T4" (QLoRA + rsLoRA, 1 epoch, 2048) or "24GB" (Trinity, 3 epochs, 4096)
vision_max_steps = None              # None: the preset's epochs; a number cuts the run short
vision_eval_n = 4
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
    # Headless Chromium for the screenshots: Ubuntu's apt package is a snap stub, so playwright's own build.
    subprocess.run([sys.executable, "-m", "playwright", "install", "--with-deps", "chromium"], check=True)
    os.chdir(course)
os.chdir(next(p for p in [Path.cwd(), *Path.cwd().parents] if (p / "lib").is_dir()))
sys.path.insert(0, os.getcwd())

from lib.environment import quiet_library_logs

quiet_library_logs()

# %% [markdown]
# ## The dataset: schema first, screens second
#
# `lib.schemas` draws a relational schema for a domain (shop, clinic, school, library, logistics,
# hotel): 3-5 related tables with typed columns, primary and foreign keys, `NOT NULL`, `UNIQUE`
# and defaults. Naming conventions vary between schemas (plural or singular table names, `id` or
# `<table>_id` keys, `INTEGER` or `BIGINT`), as they do between real codebases. `lib.ui_render`
# turns a schema into one of four screens, each revealing the tables the way apps do:
#
# * a **form** (create/edit one table: labels, input types, required marks, dropdowns for foreign keys),
# * a **table** (a list page: column headers and rows),
# * a **detail** page (one record with a related table below it),
# * a **dashboard** (counts, and recent records of several tables).
#
# Each in one of four stylesheets (clean, dark, compact, sidebar), so no model can learn one look.
# The label of an example is the DDL of exactly the tables its screen shows. The split is by
# schema: no test schema's tables were seen in training. Every screenshot is also read back by OCR
# (next section) when the dataset is built; a rerun with the same settings reuses the dataset.

# %%
import time
import pandas as pd
from lib.environment import import_backend, validate_environment
from lib.ghost_dataset import build_dataset

env = validate_environment(compute_dtype)
chosen_backend = env.backend if backend == "auto" else backend
import_backend(chosen_backend)  # unsloth must be imported before transformers to patch it
run_dir = Path(output_dir) / run_name
data_dir = run_dir / "ghost-data"
started = time.monotonic()
examples = build_dataset(data_dir, examples=dataset_examples, seed=dataset_seed,
                         screens_per_schema=screens_per_schema, workers=ocr_workers)
print(f"{len(examples)} screens ready in {time.monotonic() - started:.0f} s (rendering, screenshots, OCR; "
      "a rerun with the same settings reuses them)")
frame = pd.DataFrame([{"split": e.split, "domain": e.domain, "kind": e.kind, "style": e.style,
                       "schema": e.schema_seed, "tables": len(e.tables)} for e in examples])
frame.groupby("split").agg(screens=("kind", "size"), schemas=("schema", "nunique"),
                           domains=("domain", "nunique"), tables_per_screen=("tables", "mean")).round(2)

# %%
pd.crosstab(frame["kind"], frame["style"], margins=True)

# %% [markdown]
# Three screens of one test schema, beside the DDL they were rendered from:

# %%
from lib import plots

test_examples = [e for e in examples if e.split == "test"]
first_schema = [e for e in test_examples if e.schema_seed == test_examples[0].schema_seed][:3]
plots.screens_beside_ddl([(f"{e.id}: {e.kind}, {e.style} style ({e.domain})", data_dir / e.image, e.ddl)
                          for e in first_schema]);

# %% [markdown]
# ## Reading the pixels: OCR and layout analysis
#
# A user has a screenshot, not the page's DOM. `lib.ocr` reads its words with RapidOCR (PaddleOCR's
# PP-OCRv6 detection and recognition models, shipped inside the `rapidocr` wheel, Apache-2.0, run
# by onnxruntime: no download, no GPU), with the angle classifier off (screenshots are upright;
# with it on, upright words came back upside down). `lib.screen_layout` then rebuilds the screen's
# structure from geometry alone: the form controls are the rectangles drawn in the pixels (inputs,
# selects with their arrow, text areas, checkboxes, buttons), a label is the text just above or
# left of its control, table cells go to the column whose whitespace gap they sit between, rows by
# line, the heading is the largest font at the top, a navigation bar the column of text left of it.
# The result has the same format as the DOM text: one screen, both readings:

# %%
from lib.ocr import read_text_boxes

shown = next((e for e in test_examples if e.kind == "form"), test_examples[0])
plots.ocr_reading(data_dir / shown.image, read_text_boxes(data_dir / shown.image), shown.ocr_text, shown.screen_text);

# %% [markdown]
# **What pixels cannot carry.** An empty text input looks the same whatever its type (text,
# number, email), so every one reads `[input]`; its maximum length is invisible; a select shows
# its first option only. The layout step is therefore measured against what a screenshot can
# show at best (`lib.screen_layout.visible_text`, the DOM text with those details removed), and
# the last column measures against the full DOM text, so the difference is what pixels cannot carry.
# Over every screen of the dataset, by screen kind:

# %%
from lib.screen_layout import reading_scores

readings = pd.DataFrame([{"kind": e.kind, **reading_scores(e.ocr_text, e.screen_text)} for e in examples])
reading_table = readings.groupby("kind").mean().assign(screens=readings.kind.value_counts())
reading_table.loc["all"] = readings.drop(columns="kind").mean().tolist() + [len(readings)]
reading_table.rename(columns={"word_recall": "words read", "line_recall": "lines recovered (of what pixels show)",
                              "page_exact": "pages exactly right", "dom_line_recall": "lines recovered (of the DOM)"}
                     ).round(3)

# %% [markdown]
# Forms lose the most against the DOM: every field line names its input type there. What that
# costs the SQL is measured below, by training one model on the DOM text and one on OCR'd text
# and reading the test screenshots with both.

# %% [markdown]
# ## Scoring SQL for real
#
# `lib.sql_eval` scores any generated SQL against the true DDL:
#
# * **parses**: sqlglot reads it as SQLite statements (the source's "syntactically correct");
# * **executes**: SQLite runs it in an in-memory database;
# * then the schema SQLite actually created (read back with `PRAGMA table_info` and
#   `PRAGMA foreign_key_list`, so all DDL spellings compare equal) against the truth: **table F1**,
#   **column F1** (table, column) pairs, **type accuracy** (by SQLite type affinity, on the columns
#   found in both), **primary-key F1** and **foreign-key F1** (table, column, referenced table,
#   referenced column).
#
# A check of the scorer on the truth itself and on two damaged copies:

# %%
from lib.sql_eval import score_schema

truth = first_schema[0].ddl
without_last_table = truth[:truth.rstrip().rstrip(";").rfind("CREATE TABLE")]
cases = {"the truth": truth, "last table dropped": without_last_table or "SELECT 1;",
         "types as TEXT, no keys": truth.replace("INTEGER", "TEXT").replace("PRIMARY KEY", "")
                                         .replace("BIGINT", "TEXT"),
         "a missing parenthesis": truth.replace(")", "", 1)}
pd.DataFrame({name: score_schema(sql, truth).to_dict() for name, sql in cases.items()}).T

# %% [markdown]
# Generated SQL is untrusted input, and the scorer executes it. Every execution (scorer, command
# line, app) runs in `lib.sql_sandbox`: a fresh in-memory database per answer that cannot attach
# files, run PRAGMAs, grow past 10 MiB or run past 2 s; every failure is a scored "does not parse"
# or "does not execute" with its reason. Answers a model could write:

# %%
hostile = {"attach a file": "ATTACH DATABASE 'stolen.db' AS x; CREATE TABLE x.t (id INTEGER);",
           "write a copy to disk": "CREATE TABLE t (id INTEGER); VACUUM INTO 'copy.db';",
           "never stop": "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT count(*) FROM n;",
           "lift the size cap": "PRAGMA max_page_count = 2147483647;",
           "nest 60 deep": "CREATE TABLE t (x INTEGER DEFAULT " + "(" * 60 + "1" + ")" * 60 + ");",
           "lone surrogate": "CREATE TABLE t (name TEXT DEFAULT '\ud800');"}
pd.DataFrame([{"answer": name, **{k: v for k, v in score_schema(sql, truth).to_dict().items()
                                  if k in ("parses", "executes", "error")}} for name, sql in hostile.items()]
             ).style.hide(axis="index")

# %% [markdown]
# ## The text Ghost Architect: Trinity on Gemma 3 270M
#
# The embedded 270M model has no vision tower, but the task survives without it: given a screen's
# text and structure, write the DDL. The conversation is the instruction plus the screen text in
# the user turn, the DDL as the answer; loss on the answer only. The Trinity as in chapter 04: NF4
# base, LoRA rank 64 on all 7 projections, rsLoRA, DoRA. Two models are trained the same way on
# the same screens: one reads the page's **DOM text** (what a scraper has), one reads the **OCR'd
# text** (what the model will see at test time, from a user's screenshot).

# %%
from lib.data import conversation_lengths, tokenize_conversation
from lib.ghost_dataset import text_records
from lib.model import load_tokenizer, resolve_model

source_model = resolve_model(model_name)
tokenizer = load_tokenizer(source_model)
lengths = conversation_lengths(tokenizer, {f"{split} ({source})": text_records(examples, split, data_dir, source)
                                           for source in ("dom", "ocr") for split in ("train", "test")}, max_seq_length)
plots.token_length_histogram(lengths, max_seq_length);

# %% [markdown]
# Response-only loss, checked as in chapter 04: the tokens that carry loss decode to exactly the
# DDL and the end-of-turn marker.

# %%
first = text_records(examples, "train", data_dir, "ocr")[0]
tokens = tokenize_conversation(tokenizer, first.messages)
trained = tokenizer.decode([t for t, m in zip(tokens["input_ids"], tokens["assistant_masks"]) if m])
assert trained == first.reference + "<end_of_turn>\n"
print(f"{sum(tokens['assistant_masks'])} of {len(tokens['input_ids'])} tokens carry loss")

# %% [markdown]
# ## Trained on DOM text, trained on OCR text; measured from the screenshots
#
# The test screenshots are read by OCR once, timed, and every model answers from that text. The
# base model is the same NF4 base with the adapter switched off. For reference, the DOM-trained
# model also answers from the DOM text it was trained on: the score a user with only a screenshot
# cannot get.

# %%
from lib.ghost_architect import evaluate_text_model, read_screens_timed, train_text_architect
from lib.run_spec import RunSpec
from lib.training import read_log

test = test_examples[:eval_n]
test_texts, ocr_seconds = read_screens_timed(test, data_dir)
print(f"OCR + layout of {len(test)} test screenshots: {sum(ocr_seconds) / len(test):.2f} s per screenshot "
      f"(this CPU, one thread)")
spec = RunSpec.of(model_name, rank=rank, alpha=alpha, use_rslora=use_rslora, use_dora=use_dora, max_steps=max_steps,
                  batch_size=batch_size, learning_rate=learning_rate, max_seq_length=max_seq_length, seed=seed,
                  save_steps=max(1, max_steps // 2), backend=chosen_backend, compute_dtype=compute_dtype)
reports, trainings = {}, {}
for source in ("dom", "ocr"):
    model, tokenizer, trainings[source] = train_text_architect(examples, data_dir, source, run_dir / f"ghost-{source}",
                                                               spec, env.device)
    if source == "dom":
        reports["base, from pixels"], _ = evaluate_text_model(model, tokenizer, test, max_new_tokens,
                                                              eval_batch_size, adapter=False, texts=test_texts)
        reports["DOM-trained, from its DOM text"], _ = evaluate_text_model(model, tokenizer, test, max_new_tokens,
                                                                           eval_batch_size, source="dom")
    reports[f"{source.upper()}-trained, from pixels"], _ = evaluate_text_model(
        model, tokenizer, test, max_new_tokens, eval_batch_size, texts=test_texts)
    del model
pd.DataFrame({source: {k: v for k, v in result.stats.items() if k not in ("config", "trainable_parameters")}
              for source, result in trainings.items()}).T

# %%
plots.training_curves(read_log(run_dir / "ghost-ocr"), "reserved by torch" if env.device == "cuda"
                      else "resident set size (RSS)");

# %%
from lib.sql_eval import aggregate_report

scores = {name: aggregate_report(table) for name, table in reports.items()}
seconds = {name: {"OCR s/screen": sum(ocr_seconds) / len(test) if "pixels" in name else 0.0,
                  "generation s/screen": table.generation_seconds.mean()} for name, table in reports.items()}
summary = pd.DataFrame(scores).T.join(pd.DataFrame(seconds).T)
summary.round(3)

# %%
plots.schema_scores(scores, target_parse_rate=0.9);

# %% [markdown]
# By screen kind, for the OCR-trained model from pixels. Names are matched exactly, and columns as
# (table, column) pairs, so a wrong table name costs the table and all its columns. A data table or
# a dashboard shows the table's name as the app's heading ("Submissions"); a form shows "New
# submission", which does not say whether the schema names its tables in the plural or the
# singular. That convention varies between the generated schemas as between real codebases, and a
# form cannot reveal it.

# %%
kinds = [e.kind for e in test]
by_kind = pd.concat({name: table.assign(kind=kinds).groupby("kind")[["parses", "executes", "column_f1"]].mean()
                     for name, table in reports.items() if "trained" in name}, axis=1)
by_kind[("", "screens")] = pd.Series(kinds).value_counts()
by_kind.round(2)

# %% [markdown]
# One test screenshot, what OCR read, what each model wrote, and the truth:

# %%
print(f"--- OCR + layout of {test[0].image} ---\n{test_texts[0]}\n")
for name, table in reports.items():
    print(f"--- {name} (parses: {table.parses[0]}, column F1 {table.column_f1[0]:.2f}) ---\n{table.sql[0]}\n")
print(f"--- truth ---\n{test[0].ddl}")

# %% [markdown]
# The source's target for the vision model is "more than 90% syntactically correct schemas"
# (claim C20). The OCR-trained text model's share, measured from the test screenshots above, goes
# into the claims ledger; it is the 270M reading OCR'd screen text, not the 4B reading pixels, and
# the ledger says so.

# %%
from lib.artifacts import write_json
from lib.claims import ClaimsLedger, ledger_table

best = scores["OCR-trained, from pixels"]
ledger = ClaimsLedger("08_ghost_architect", run_dir)
ledger.measure("C20", f"{best['parses']:.0%} of {len(test)} test screenshots parse (sqlglot), "
               f"{best['executes']:.0%} execute in SQLite; base model {scores['base, from pixels']['parses']:.0%}",
               "Trained on DOM text, trained on OCR text", {"parses_percent": 100 * best["parses"]},
               note=f"OCR + text Ghost Architect ({model_name}, {max_steps} steps on OCR'd screens), end to end from "
                    "the screenshots; not the source's 4B vision model")
write_json(run_dir / "metrics" / "ghost-architect.json",
           {"scores": scores, "seconds": seconds, "ocr_seconds": ocr_seconds,
            "reading": reading_table.reset_index().to_dict("records"),
            "training": {source: {k: v for k, v in r.stats.items() if k != "config"} for source, r in trainings.items()},
            "examples": {name: table.to_dict("records") for name, table in reports.items()}})
ledger_table(run_dir, only_measured=True).query("id == 'C20'")

# %% [markdown]
# ## The vision path
#
# The model the source trains reads the screenshot itself: Gemma 3's SigLIP vision tower turns the
# image into 256 soft tokens (896 px, 4B and larger), which the language model reads with the
# instruction. LoRA goes on both towers: the 7 projections of every decoder layer and the
# attention and MLP layers of the vision encoder (`finetune_vision_layers=True,
# finetune_language_layers=True` in unsloth's terms).
#
# The source's two training profiles are presets:

# %%
from lib.vision import PRESETS, default_vision_model, preset

pd.DataFrame([p.to_dict() for p in PRESETS.values()]).set_index("name")

# %% [markdown]
# On a CUDA GPU the backend is unsloth: `FastVisionModel` loads the checkpoint
# (`unsloth/gemma-3-4b-it` from the hub by default) and `UnslothVisionDataCollator` builds the
# batches, answers only in the labels. Without a GPU, unsloth's CPU fallback refuses vision models
# (`NotImplementedError`), so transformers + peft load it and `lib.vision.VisionCollator` does the
# collator's work.
#
# **Offline there are no vision weights.** Without a GPU, `vision_model = "auto"` builds a tiny
# Gemma3ForConditionalGeneration with *random* weights (2 text layers, 2 vision layers, 224 px
# images, 16 image tokens) and the real Gemma 3 tokenizer, as a demonstration of the GPU path. It
# runs every line of the vision path (processor, chat template with the image in the user turn,
# response-only labels, NF4, LoRA on both towers, training, generation), and that is all it tests:
# its loss and its SQL say nothing about what the method can learn. On a CPU, screenshots are
# answered by the OCR path above; the command line and the app do the same unless given a vision
# checkpoint.

# %%
from lib.vision import Conversations, adapted_towers, collator_for, load_vision_model, steps_for

vision_name = default_vision_model() if vision_model == "auto" else vision_model
vision_backend = chosen_backend if env.device == "cuda" else "peft"
chosen_preset = preset(vision_preset, model=vision_name, backend=vision_backend, compute_dtype=compute_dtype, seed=seed)
vision, processor = load_vision_model(chosen_preset.spec)
train_conversations = Conversations([e for e in examples if e.split == "train"], data_dir)
collator = collator_for(vision_backend, vision, processor, chosen_preset.spec.optimisation.max_seq_length)
print(f"model: {vision_name}; backend: {vision_backend}; preset: {chosen_preset.name}")
pd.Series(adapted_towers(vision), name="LoRA-adapted Linear layers")

# %% [markdown]
# One batch, checked: where the image sits in the sequence, and that the labels keep only the
# answer.

# %%
batch = collator([train_conversations[0]])
ids, labels = batch["input_ids"][0], batch["labels"][0]
image_tokens = int((ids == processor.tokenizer.image_token_id).sum())
answer = processor.tokenizer.decode(labels[labels != -100])
print(f"{len(ids)} tokens: {image_tokens} image tokens, {int((labels != -100).sum())} carry loss")
assert answer.startswith(train_conversations.examples[0].ddl)
print(answer[:200])

# %%
from lib.training import train_dataset

vision_steps = vision_max_steps or steps_for(chosen_preset, len(train_conversations))
vision_spec = chosen_preset.spec.replace(max_steps=vision_steps, save_steps=max(1, vision_steps // 2),
                                         warmup_steps=min(5, vision_steps))
vision_run = run_dir / "ghost-vision"
vision_result = train_dataset(vision, processor, train_conversations, collator, vision_spec, vision_run, env.device)
pd.Series(vision_result.stats).drop(["config", "trainable_parameters"])

# %%
from lib.ghost_dataset import INSTRUCTION
from lib.ghost_architect import extract_sql
from lib.sql_eval import report
from lib.vision import generate_ddl

shown = test_examples[:vision_eval_n]
answers = generate_ddl(vision, processor, [data_dir / e.image for e in shown], INSTRUCTION, max_new_tokens)
print(f"{len(shown)} test screenshots read by the vision model ({vision_name}, preset {chosen_preset.name}):")
vision_report = report([e.id for e in shown], [extract_sql(a) for a in answers], [e.ddl for e in shown])
vision_report.assign(generated=[a[:60] for a in answers])[["id", "parses", "executes", "column_f1", "generated"]]

# %% [markdown]
# With the tiny random model the generations above are noise and every score is zero, as they
# should be: nothing here measured vision quality. With `vision_model` set to a real checkpoint on
# a GPU, the same cells train it and the same scorer measures it.
#
# The GPU branch (FastVisionModel, UnslothVisionDataCollator) cannot run on a CPU. It ran on an
# H100 with the same tiny model (`tools/vision_gpu_check.py`, both presets from scratch, 2
# steps each); the stored result, with its provenance:

# %%
from lib.artifacts import read_json

gpu_check = read_json("data/measurements/vision-gpu-check.json")
print(f"{gpu_check['gpu']}, torch {gpu_check['torch']}, unsloth {gpu_check['unsloth']}, {gpu_check['date']}\n"
      f"{gpu_check['command']}\nmodel class: {gpu_check['results'][0]['model class']}")
pd.DataFrame(gpu_check["results"]).set_index("preset")[
    ["adapted layers", "fast DoRA layers", "labels decode to the answer", "LoRA B moved (language, vision)",
     "steps", "peak GiB"]]

# %% [markdown]
# ## Using it
#
# **Command line.** `python -m lib.ghost_architect` takes screenshots or folders of them, or
# `--text FILE` for a screen's text, and prints for each answer which path wrote it (OCR + the text
# model, unless `--vision-model` names a vision checkpoint) with its time per stage, the SQL
# highlighted, its validity checks as a table (parses, executes, creates tables, a primary key on
# every table, no dangling foreign key) and its tables and relationships; it exits 1 when some
# answer fails a check, 2 for bad input. Adapter and model options are checked before any model
# loads. Here on two test screenshots, through OCR, with the OCR-trained adapter:

# %%
from lib.ghost_architect import main as ghost_cli

exit_status = ghost_cli([str(data_dir / e.image) for e in test[:2]] + [
    "--text-model", model_name, "--text-adapter", str(run_dir / "ghost-ocr" / "adapter"),
    "--max-new-tokens", str(max_new_tokens)])
print(f"exit status {exit_status}")

# %% [markdown]
# **Streamlit app.** Upload a screenshot or paste a screen's text; the page says which path
# answered and shows what OCR read, the SQL, the validity checks, and the tables and relationships.
# Uploads that are empty, not an image, or over the size limit get a message naming the file and
# the problem; the limit is Streamlit's `server.maxUploadSize` (10 MB in `.streamlit/config.toml`),
# which the server itself enforces, and results are cached per uploaded file. The tests start this
# server and upload files to it with headless Chromium.
#
# ```bash
# .venv/bin/streamlit run apps/ghost_architect_app.py -- --text-adapter output/default/ghost-ocr/adapter
# ```

# %%
best, dom_best = scores["OCR-trained, from pixels"], scores["DOM-trained, from pixels"]
print(f"""Summary of this run ({len(test)} test screenshots of schemas never trained on, {env.device}, {env.compute_dtype}):
* OCR + layout recovered {reading_table.loc['all', 'line_recall']:.1%} of the lines a screenshot can show
  ({reading_table.loc['all', 'page_exact']:.0%} of pages exactly), {reading_table.loc['all', 'dom_line_recall']:.1%} of the DOM's lines,
  in {sum(ocr_seconds) / len(test):.1f} s per screenshot.
* From the screenshots: base model parses {scores['base, from pixels']['parses']:.0%}; trained on DOM text
  {dom_best['parses']:.0%} parse, {dom_best['executes']:.0%} execute, column F1 {dom_best['column_f1']:.2f};
  trained on OCR text {best['parses']:.0%} parse, {best['executes']:.0%} execute, column F1 {best['column_f1']:.2f}
  (from its own DOM text the DOM model reaches column F1 {scores['DOM-trained, from its DOM text']['column_f1']:.2f}).
* Generation took {summary.loc['OCR-trained, from pixels', 'generation s/screen']:.1f} s per screen after OCR.""")

# %% [markdown]
# ## Summary
#
# The dataset's labels are exact because the screens were drawn from them; the scorer measures
# SQL by what SQLite builds from it, in a sandbox. The cell above states this run's measurements:
# how much of a screen OCR and layout analysis recover from its pixels, and how well each text
# Ghost Architect writes the schema from test screenshots of schemas it never saw. The vision path
# runs end to end here only on a random tiny model; its numbers need a GPU and a real checkpoint.
