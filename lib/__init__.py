"""The course's library: one module per concept, named as the chapters name them.

environment     validate_environment: versions, GPU, backend choice (chapter 00)
precision       the compute dtype per device: measured on a CPU, bf16 or fp32 on a GPU
model           the embedded Gemma 3 270M, local folders, hub ids; NF4 loading; tokenizer repairs
gemma3          the Gemma 3 family's shapes and parameter counts
quantization    NF4 / FP4 / int4 round trips, bits stored per parameter (chapter 01)
run_spec        one training run: model, adapter, optimisation, loading; defaults in one place
lora            the Trinity adapter config (rank/alpha, rsLoRA, DoRA, target modules), peft layer accessors
dora            DoRA's magnitude/direction analysis (chapter 01)
fast_dora       the DoRA forward the course trains with: the norm once per optimizer step
adapter_runs    short comparison runs in fresh processes (chapter 01)
forkserver_warmup what the short runs' fork server loads once: the first run's tokenizer
memory          the memory estimator, GPU profiles, full fine-tuning accounting (chapter 02)
oom_ladder      the OOM ladder and "will it fit?" (chapter 05)
stdlib_dataset  the default dataset, built from Python's standard library
data            reading, validating, deduplicating and tokenizing conversations (chapter 03)
loss            response-only loss by chunks, without the full logits
training        SFT with response-only loss, status file, checkpoints and resume (chapter 04)
distributed     data-parallel runs through accelerate launch: ranks, launch command, digests (chapter 11)
fsdp            FSDP2 + QLoRA: the 4-bit base sharded (fully_shard), bytes per process, accelerate's flags
evaluation      base vs fine-tuned: loss, code metrics, degeneration, names, doctests, gates (chapters 06, 07)
code_sandbox    running model-written Python (doctests) in a limited subprocess
export          adapter, merged model, GGUF, Ollama Modelfile (chapter 07)
schemas         generated relational schemas (chapter 08)
ui_render       screens rendered from a schema, Chromium screenshots
ghost_dataset   screenshots labelled with their exact DDL, with DOM and OCR text
ocr             RapidOCR word boxes of a screenshot
screen_layout   layout analysis: the screen's text and structure rebuilt from the pixels
sql_eval        scoring generated DDL: parse, execute, table/column/key F1
sql_sandbox     running model-written SQL in a confined in-memory SQLite
vision          the Gemma 3 vision path: presets, tiny random model, loader, collator
ghost_architect screenshot or screen text -> DDL: the tool, its CLI, evaluation helpers
attention       attention statistics, span changes and the KV cache (chapter 09)
adapter_spectra where a fine-tune went: update size and singular values per layer and module
representations hidden-state drift: cosine and linear CKA per layer
memorization    held-out loss over steps, loss-threshold membership inference
capacity        bits per parameter on random sequences (Morris et al. 2025)
relora          ReLoRA and dynamic rank-1 merging: merge, restart, prune, jagged cosine (chapter 10)
blending        LoRA blends (peft's add_weighted_adapter, an effective-weight SVD blend), serving several
claims          the claims ledger
plots           every figure of the book
artifacts       atomic writes, whole-folder replacement, caches built once under a lock
"""
