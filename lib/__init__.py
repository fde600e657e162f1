"""The course's library: one module per concept, named as the chapters name them.

environment     validate_environment: versions, GPU, backend and precision choice
model           the embedded Gemma 3 270M, local folders, hub ids; NF4 loading
stdlib_dataset  the default dataset, built from Python's standard library
data            reading, validating, deduplicating and tokenizing conversations
lora            the Trinity adapter config: LoRA rank/alpha, rsLoRA, DoRA, target modules
training        SFT with response-only loss, status file, checkpoints and resume
evaluation      base vs fine-tuned: response loss, perplexity, code metrics, gates
plots           every figure of the book
artifacts       atomic writes of run files (write, then rename)
"""
