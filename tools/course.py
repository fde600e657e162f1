"""Run the course: execute every chapter once with papermill, then build the book from the results.

    python -m tools.course all            # execute with default parameters, build _build/html
    python -m tools.course execute        # only execute (into _build/executed)
    python -m tools.course build          # only build from already executed notebooks
    python -m tools.course notebooks      # the chapters as .ipynb, for the branch Colab opens
    python -m tools.course notebooks --push origin   # and publish them as that branch

The book never re-executes (execute_notebooks: off): what it shows is what papermill ran.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
BOOK_FILES = ("_config.yml", "_toc.yml", "intro.md")


# Small parameters that exercise every cell of every chapter in a few minutes (the tests use them).
# Chapter 10 blends with linear and cat only: peft's other methods take an SVD of every module's
# update (about 25 s at the 270M's size), through the same loop; tests/test_blending.py runs them.
SMOKE_PARAMETERS = {
    "*": {"run_name": "smoke", "max_seq_length": 256},
    # every parameter changed (tests/parameter_probes.py reads each back); the DoRA run at the sweep's low rank
    "01_concepts": {"sweep_ranks": [4, 64], "sweep_steps": 3, "track_every": 1, "batch_size": 1,
                    "max_seq_length": 128, "learning_rate": 1e-4, "alpha": 16, "dora_rank": 4, "table_ranks": [8, 32],
                    "seed": 7, "compute_dtype": "float32"},
    "04_trinity_training": {"max_steps": 3, "batch_size": 2, "save_steps": 2, "warmup_steps": 1,
                            "sample_every": 2, "sample_max_new_tokens": 8},
    # every parameter changed (tests/parameter_probes.py); at r=16 the 1.47 GiB simulated GPU still
    # refuses two rungs before one fits
    "05_oom_ladder": {"demo_steps": 1, "demo_seq_length": 64, "demo_budget_gib": 1.47, "model_size": "4B",
                      "gpu": "L4", "backend": "peft", "rank": 16, "use_dora": False, "batch_size": 2},
    # every parameter changed (tests/parameter_probes.py reads each back): 3 generations in batches of 2
    "06_evaluate": {"eval_limit": 4, "generate_n": 3, "max_new_tokens": 16, "eval_batch_size": 2,
                    "repetition_penalty": 1.3, "prompt_shots": 2, "min_loss_drop": 0.1, "min_task_gain": 20.0,
                    "max_p_value": 0.1, "compute_dtype": "float32"},
    "07_export": {"eval_limit": 4, "generate_n": 3, "max_new_tokens": 16, "eval_batch_size": 2,
                  "quantizations": ["q4_k_m"],  # q8_0's path is the same call (tests/test_export.py runs it)
                  "n_ctx": 512, "compare_original_merge": False, "max_relative_change": 0.1, "compute_dtype": "float32"},
    # every parameter changed: 8 schemas of 3 screens, the 24GB vision preset (cut to 2 steps)
    "08_ghost_architect": {"dataset_examples": 24, "dataset_seed": 1, "screens_per_schema": 3, "ocr_workers": 1,
                           "max_steps": 2, "batch_size": 2, "learning_rate": 1e-4, "max_seq_length": 1024,
                           "backend": "peft", "compute_dtype": "float32", "seed": 7, "eval_n": 2,
                           "max_new_tokens": 16, "eval_batch_size": 2, "vision_preset": "24GB",
                           "vision_max_steps": 2, "vision_eval_n": 1},
    "09_inside_gemma3": {"compute_dtype": "float32", "rank": 16, "alpha": 8, "seed": 7, "context_lengths": [128, 640],
                         "span_blocks": 1, "span_test_limit": 3, "short_window": 32,
                         "drift_records": 2, "own_train_records": 4, "own_max_steps": 2, "own_batch_size": 2,
                         "held_out_every": 1, "held_out_records": 2, "capacity_hidden_sizes": [8, 16],
                         "capacity_dataset_multiples": [0.5, 1.0], "capacity_steps": 20, "capacity_lora_ranks": [2],
                         "real_lora_ranks": [1], "real_lora_sequences": 2, "real_lora_steps": 2},
    # every parameter changed: 3 steps, so that ReLoRA's merge at step 2 is followed by its re-warm-up step
    "10_beyond_lora": {"steps": 3, "batch_size": 1, "max_seq_length": 192, "learning_rate": 1e-4, "lora_rank": 8,
                       "relora_rank": 4, "relora_every": 2, "relora_prune": 0.5, "relora_warmup": 1,
                       "rank1_merge_every": [1], "eval_records": 2, "blend_weights": [0.5],
                       "blend_methods": ["linear", "cat"], "blend_eval_records": 1, "ghost_adapter": "ghost-dom",
                       "seed": 7, "compute_dtype": "float32"},
    "11_scale_out": {"steps": 2, "batch_size": 1, "max_seq_length": 128, "rank": 4, "fsdp_steps": 2, "fsdp_window": 32,
                     "fsdp_storages": ["uint8"],  # tests/test_fsdp.py shards both storages
                     "learning_rate": 1e-4, "seed": 7, "compute_dtype": "float32"},
}


# What a chapter reads from an earlier chapter's run folder (<output_dir>/<run_name>/): run those
# first. Book order satisfies it; `execute_concurrently` waits for them.
PREREQUISITES = {
    "04_trinity_training": ("03_data",),                        # the prepared splits
    "06_evaluate": ("04_trinity_training",),                    # the trained adapter
    "07_export": ("04_trinity_training", "06_evaluate"),        # the adapter; 06's scores as the yardstick
    "09_inside_gemma3": ("04_trinity_training",),               # the adapter and the splits
    "10_beyond_lora": ("04_trinity_training", "08_ghost_architect"),  # the code and the SQL adapters
}


def chapter_parameters(parameters: dict[str, dict] | None, stem: str, declared=None) -> dict:
    """One chapter's values from {"*": for every chapter that has the parameter, stem: for that
    one}: the chapter's own win. `declared`: the chapter's parameter names (`declared_parameters`),
    which "*" values are limited to; None: no limit. A name the chapter's own values set is passed
    whether declared or not (papermill then warns of it)."""
    shared = (parameters or {}).get("*", {})
    if declared is not None:
        shared = {name: value for name, value in shared.items() if name in declared}
    return shared | (parameters or {}).get(stem, {})


def declared_parameters(source: Path) -> list[str]:
    """The names a py:percent chapter's `parameters` cell assigns, as papermill reads them."""
    import jupytext
    from papermill.translators import PythonTranslator

    cells = [c for c in jupytext.read(source).cells if "parameters" in c.metadata.get("tags", [])]
    return [p.name for cell in cells[:1] for p in PythonTranslator.inspect(cell)]


def chapters(root: Path = ROOT) -> list[Path]:
    """The chapter sources listed in _toc.yml, in book order."""
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    return [root / f"{entry['file']}.py" for entry in toc["chapters"]]


class PeakMemory:
    """Peak resident memory (GiB) of this process's children and their children, polled every
    `interval` seconds while the context is open: a chapter's kernel and the processes it starts."""

    def __init__(self, interval: float = 0.5):
        self.interval, self.peak_gib = interval, 0.0

    def _poll(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._stop.wait(self.interval):
            total = 0
            for child in me.children(recursive=True):
                try:
                    total += child.memory_info().rss
                except psutil.Error:  # it ended between listing and reading
                    pass
            self.peak_gib = max(self.peak_gib, total / 2**30)

    def __enter__(self):
        import threading

        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def execute_chapter(source: Path, output: Path, parameters: dict | None = None) -> float:
    """Convert a py:percent chapter to a notebook and execute it with papermill; returns seconds.

    Raises papermill.PapermillExecutionError (with the failing cell) if any cell fails; the
    partially executed notebook is still written to `output` for inspection.
    """
    import jupytext
    import papermill

    output.parent.mkdir(parents=True, exist_ok=True)
    notebook = output.with_suffix(".source.ipynb")
    jupytext.write(jupytext.read(source), notebook)
    # The kernel must run this interpreter (the venv's), whatever `python` is on PATH.
    interpreter_dir = str(Path(sys.executable).parent)
    if not os.environ["PATH"].startswith(interpreter_dir + os.pathsep):
        os.environ["PATH"] = f"{interpreter_dir}{os.pathsep}{os.environ['PATH']}"
    started = time.monotonic()
    try:
        papermill.execute_notebook(str(notebook), str(output), parameters=parameters or {}, cwd=str(ROOT),
                                   kernel_name="python3", progress_bar=False)
    finally:
        notebook.unlink(missing_ok=True)
    return time.monotonic() - started


def execute_all(executed_dir: Path, parameters: dict[str, dict] | None = None,
                only: list[str] | None = None) -> dict[str, dict]:
    """Execute every chapter in order (or those named in `only`) into `executed_dir/chapters/`.

    Returns {chapter: {"seconds", "peak_rss_gib"}} (the kernel and its child processes, polled),
    also written to `executed_dir/timings.json` with the machine's CPU and compute dtype; with
    `only`, the other chapters' earlier entries there are kept. Raises ValueError for a name in
    `only` that is not a chapter of _toc.yml.
    """
    from lib.artifacts import read_json, write_json
    from lib.precision import choose_compute_dtype, cpu_features, default_device

    sources = chapters()
    unknown = sorted(set(only or ()) - {s.stem for s in sources})
    if unknown:
        raise ValueError(f"not chapters of _toc.yml: {', '.join(unknown)}")
    earlier = executed_dir / "timings.json"
    timings = read_json(earlier)["chapters"] if only and earlier.exists() else {}
    for source in sources:
        if only and source.stem not in only:
            continue
        extra = chapter_parameters(parameters, source.stem, declared_parameters(source))
        with PeakMemory() as memory:
            seconds = execute_chapter(source, executed_dir / "chapters" / f"{source.stem}.ipynb", extra)
        timings[source.stem] = {"seconds": round(seconds, 1), "peak_rss_gib": round(memory.peak_gib, 2)}
        print(f"executed {source.stem} in {seconds:.0f} s, peak RSS {memory.peak_gib:.2f} GiB", flush=True)
        write_json(executed_dir / "timings.json", {
            "chapters": timings, "cpu": cpu_features(),
            "compute_dtype": str(choose_compute_dtype(default_device())[0]).removeprefix("torch."),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return timings


def execute_concurrently(executed_dir: Path, parameters: dict[str, dict] | None = None,
                         workers: int = 2) -> dict[str, float]:
    """Execute every chapter into `executed_dir/chapters/`, `workers` at a time, each once the
    chapters it reads from (PREREQUISITES) have finished; returns {chapter: seconds}.

    For the tests, where the chapters run at smoke size and many of their seconds go to one thread
    (imports, tokenizing, process starts): on a 2-core machine two at a time keep both cores busy.
    A course run keeps book order (`execute_all`: its timings and peak memory are per chapter).
    Raises the first failing chapter's error (papermill.PapermillExecutionError) once the running
    chapters end; a chapter whose prerequisite failed is not run.
    """
    from concurrent.futures import ThreadPoolExecutor

    def after(needs, source, extra):
        for need in needs:
            need.result()  # raises the prerequisite's error: this chapter is not run
        return execute_chapter(source, executed_dir / "chapters" / f"{source.stem}.ipynb", extra)

    futures = {}
    with ThreadPoolExecutor(workers) as pool:
        # Book order lists prerequisites first, and the pool starts tasks in submission order, so a
        # waiting task waits only for tasks already running: no deadlock, whatever `workers` is.
        for source in chapters():
            extra = chapter_parameters(parameters, source.stem, declared_parameters(source))
            needs = [futures[stem] for stem in PREREQUISITES.get(source.stem, ())]
            futures[source.stem] = pool.submit(after, needs, source, extra)
    return {stem: future.result() for stem, future in futures.items()}


def build_book(executed_dir: Path, html_dir: Path | None = None) -> Path:
    """Build the HTML book from executed notebooks, warnings as errors; returns the html folder.

    Copies the book's config, toc and intro next to the executed chapters and runs Jupyter Book
    (1.x) there. Raises subprocess.CalledProcessError if the build fails or warns.
    """
    for name in BOOK_FILES:
        shutil.copy(ROOT / name, executed_dir / name)
    subprocess.run([str(Path(sys.executable).parent / "jupyter-book"), "build", "-W", "-n", "--keep-going", str(executed_dir)],
                   check=True)
    html = executed_dir / "_build" / "html"
    if html_dir:
        if html_dir.exists():
            shutil.rmtree(html_dir)
        shutil.copytree(html, html_dir)
        return html_dir
    return html


def write_notebooks(folder: Path) -> list[Path]:
    """Write every chapter of _toc.yml as an unexecuted notebook, `folder/chapters/<stem>.ipynb`:
    what the book's Colab buttons open (they link to the `repository.branch` of _config.yml, whose
    tree is this folder). Returns the notebooks written."""
    import jupytext

    written = []
    for source in chapters():
        notebook = folder / "chapters" / f"{source.stem}.ipynb"
        notebook.parent.mkdir(parents=True, exist_ok=True)
        jupytext.write(jupytext.read(source), notebook)
        written.append(notebook)
    return written


def publish_notebooks(folder: Path, remote: str, repo: Path = ROOT) -> None:
    """Commit `folder` (`write_notebooks`) as the whole tree of _config.yml's `repository.branch` in
    the git repository `repo` and force-push that branch to `remote` (a remote's name or URL). The
    branch is derived output, as a book's gh-pages is: each commit replaces its whole tree, and
    the push is forced so that a fresh clone (no local copy of the branch) can publish. ghp-import
    does the git work. Raises subprocess.CalledProcessError where git refuses."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True,
                          check=True).stdout.strip()
    subprocess.run([sys.executable, "-m", "ghp_import", "--branch", repository()["branch"], "--remote", remote,
                    "--push", "--force", "--message", f"The chapters as notebooks, from {head}", str(folder)],
                   cwd=repo, check=True)


def repository(root: Path = ROOT) -> dict:
    """_config.yml's `repository` (url, branch): the one place the course's repository is written."""
    return yaml.safe_load((root / "_config.yml").read_text())["repository"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=["all", "execute", "build", "notebooks"])
    parser.add_argument("--executed-dir", type=Path, default=ROOT / "_build" / "executed")
    parser.add_argument("--only", nargs="+", metavar="CHAPTER", help="execute only these chapters (e.g. 09_inside_gemma3)")
    parser.add_argument("--push", metavar="REMOTE", help="notebooks: publish them as the Colab branch to this remote")
    args = parser.parse_args(argv)
    if args.step in ("all", "execute"):
        started = time.monotonic()
        timings = execute_all(args.executed_dir, only=args.only)
        print(f"all chapters executed in {time.monotonic() - started:.0f} s: {timings}")
    if args.step in ("all", "build"):
        html = build_book(args.executed_dir, ROOT / "_build" / "html")
        print(f"book: {html / 'index.html'}")
    if args.step == "notebooks":
        folder = ROOT / "_build" / "notebooks"
        shutil.rmtree(folder, ignore_errors=True)  # the branch holds the chapters of _toc.yml, nothing older
        count = len(write_notebooks(folder))
        if args.push:
            publish_notebooks(folder, args.push)
            print(f"{count} notebooks pushed to {args.push} as the '{repository()['branch']}' branch")
        else:
            print(f"{count} notebooks in {folder}: `--push REMOTE` publishes them as the "
                  f"'{repository()['branch']}' branch")
    return 0


if __name__ == "__main__":
    sys.exit(main())
