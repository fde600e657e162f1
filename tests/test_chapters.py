"""nbdev's discipline: every chapter runs (papermill, smoke parameters), the book builds with
warnings as errors, and a real browser shows each chapter's figures."""

import math
import shutil

import nbformat
import pytest

from parameter_probes import (COLAB_ONLY, EXTRA_RUN_REUSES, EXTRA_RUNS, MADE_SMOKE_VALUES, NOT_CHANGED, PROBES, Shown,
                              defaults)
from tools.course import (ROOT, SMOKE_PARAMETERS, build_book, chapter_parameters, chapters, declared_parameters,
                          execute_chapter, execute_concurrently, repository)

CHROMIUM = "/usr/bin/chromium"

# pytest.ini's 1500 s limit counts a test's fixture setup, and the module fixture below runs every
# chapter: 24 minutes of smoke runs on a 2-core AVX2 CPU in float32, two at a time beside the other
# xdist worker (38 minutes one at a time on a slower VM of that kind). That limit interrupted this
# module twice (a KeyboardInterrupt inside whichever chapter was running at 25 minutes).
pytestmark = pytest.mark.timeout(3600)


@pytest.fixture(scope="module")
def smoke_output(tmp_path_factory):
    return tmp_path_factory.mktemp("output")


@pytest.fixture(scope="module")
def smoke_parameters(tmp_path_factory, smoke_output):
    """tools.course.SMOKE_PARAMETERS, writing to `smoke_output`, with the values made for the test
    (parameter_probes.MADE_SMOKE_VALUES)."""
    made = tmp_path_factory.mktemp("made")
    parameters = SMOKE_PARAMETERS | {"*": SMOKE_PARAMETERS["*"] | {"output_dir": str(smoke_output)}}
    for stem, values in MADE_SMOKE_VALUES.items():
        parameters[stem] = parameters.get(stem, {}) | {name: make(made, parameters) for name, make in values.items()}
    return parameters


@pytest.fixture(scope="module")
def executed(tmp_path_factory, smoke_parameters):
    """All chapters executed with smoke parameters, two at a time, each after the chapters it
    reads from; a failing cell fails here."""
    folder = tmp_path_factory.mktemp("book")
    execute_concurrently(folder, smoke_parameters)
    return folder


def image_outputs(notebook_path) -> int:
    notebook = nbformat.read(notebook_path, as_version=4)
    return sum("image/png" in output.get("data", {}) for cell in notebook.cells if cell.cell_type == "code"
               for output in cell.get("outputs", []))


def test_every_chapter_executes_without_error(executed):
    for source in chapters():
        notebook = nbformat.read(executed / "chapters" / f"{source.stem}.ipynb", as_version=4)
        errors = [o for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", [])
                  if o.output_type == "error"]
        assert not errors, f"{source.stem}: {errors[0]['ename']}: {errors[0]['evalue']}"
        # the smoke values for every chapter ("*") reached exactly the chapters that have the parameter
        expected = "smoke" if "run_name" in declared_parameters(source) else None
        assert notebook.metadata["papermill"]["parameters"].get("run_name") == expected, source.stem


def test_training_progress_is_one_line_updated_in_place(executed):
    notebook = nbformat.read(executed / "chapters" / "04_trinity_training.ipynb", as_version=4)
    shown = [o["data"]["text/html"] for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", [])
             if "<progress" in o.get("data", {}).get("text/html", "")]
    steps = SMOKE_PARAMETERS["04_trinity_training"]["max_steps"]
    assert len(shown) == 1 and f"done: step {steps}/{steps}" in shown[0], shown


def copy_training_run(source, target, also=()):
    """The prepared data and chapter 04's training run (lib.training.run_paths: what a resume reads)
    and the folders named in `also`, not the later chapters' outputs in the same folder (GBs of
    merges and short runs)."""
    from lib.training import run_paths

    target.mkdir(parents=True)
    for path in [source / "data", *(p for name, p in run_paths(source).items() if name != "run"),
                 *(source / name for name in also)]:
        if path.is_dir():
            shutil.copytree(path, target / path.relative_to(source), dirs_exist_ok=True)
        elif path.exists():
            (target / path.relative_to(source)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target / path.relative_to(source))


def extra_run(stem, smoke, default, smoke_output, tmp_path):
    """The chapter run again with EXTRA_RUNS' changes on top of its smoke parameters, in a new output
    folder holding a copy of the smoke run's data and training run (`copy_training_run`) and what
    EXTRA_RUN_REUSES names; returns what it left (a Shown)."""
    changes = {name: value(tmp_path, smoke) if callable(value) else value for name, value in EXTRA_RUNS[stem].items()}
    out = tmp_path / "output"
    copy_training_run(smoke_output / smoke["run_name"], out / smoke["run_name"], EXTRA_RUN_REUSES.get(stem, ()))
    given = smoke | changes | {"output_dir": str(out)}
    execute_chapter(ROOT / "chapters" / f"{stem}.py", tmp_path / f"{stem}.ipynb", given)
    return Shown(tmp_path / f"{stem}.ipynb", given, default)


@pytest.mark.parametrize("stem", PROBES)
def test_every_parameter_takes_effect(stem, executed, smoke_parameters, smoke_output, tmp_path):
    """Each parameter of the chapter is changed (in its smoke run or one more run) and a probe reads
    back, from what the run wrote or showed, the value that took effect (tests/parameter_probes.py)."""
    default = defaults(stem, ROOT)
    probes, exempt = PROBES[stem], NOT_CHANGED.get(stem, {})
    assert set(exempt) <= set(default), f"{stem}: NOT_CHANGED names no parameter {set(exempt) - set(default)}"
    unprobed = set(default) - set(probes) - COLAB_ONLY - set(exempt)
    assert not unprobed, f"{stem}: no probe for {sorted(unprobed)}"
    smoke = chapter_parameters(smoke_parameters, stem)
    runs = {"smoke": Shown(executed / "chapters" / f"{stem}.ipynb", smoke, default)}
    if stem in EXTRA_RUNS:
        runs["extra"] = extra_run(stem, smoke, default, smoke_output, tmp_path)
    failures = []
    for name, probe in probes.items():
        label = "extra" if name in EXTRA_RUNS.get(stem, {}) else "smoke"
        shown = runs[label]
        given = shown.given
        if given.get(name, default[name]) == default[name]:
            failures.append(f"{name}: the {label} run leaves it at its default {default[name]!r}")
            continue
        try:
            seen = probe(shown)
        except Exception as error:  # noqa: BLE001 (reported with the others)
            failures.append(f"{name}: the probe failed: {type(error).__name__}: {error}")
            continue
        same = math.isclose(seen, given[name], rel_tol=1e-6) if isinstance(seen, float) else seen == given[name]
        if not same:
            failures.append(f"{name}: the {label} run was given {given[name]!r} and shows {seen!r}")
    assert not failures, f"{stem}:\n" + "\n".join(failures)


@pytest.fixture(scope="module")
def html(executed):
    return build_book(executed)  # raises if Sphinx warns (-W)


def test_pages_show_their_figures_in_a_browser(executed, html):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        page = browser.new_page()
        for source in chapters():
            expected = image_outputs(executed / "chapters" / f"{source.stem}.ipynb")
            page.goto((html / "chapters" / f"{source.stem}.html").as_uri())
            page.wait_for_load_state("load")
            shown = page.eval_on_selector_all(  # the article only: the header's launch button has a logo
                "main article.bd-article img", "imgs => imgs.filter(i => i.complete && i.naturalWidth > 0).length")
            heading = page.inner_text("main h1")
            assert shown == expected, f"{source.stem}: {shown} figures shown, notebook has {expected}"
            assert heading.split(".")[0].strip() == str(int(source.stem[:2])), heading
            assert "Traceback" not in page.inner_text("main")
            # The launch button opens this chapter's notebook in Colab, from _config.yml's repository.
            colab = f"https://colab.research.google.com/github/{repository()['url'].removeprefix('https://github.com/')}"
            links = page.eval_on_selector_all("a[href*='colab.research.google.com']", "as => as.map(a => a.href)")
            assert f"{colab}/blob/{repository()['branch']}/chapters/{source.stem}.ipynb" in links, f"{source.stem}: {links}"
            if source.stem == "01_concepts":  # the claims ledger is rendered with measured verdicts
                ledger = page.locator("main table").last.inner_text()
                assert "C05" in ledger and "holds" in ledger and "not measured yet" in ledger
            if source.stem == "05_oom_ladder":  # the GPU transcript and the local ladder are shown
                text = page.inner_text("main")
                assert "seq -> 2048" in text and "models still alive after the ladder: 0" in text
            if source.stem == "08_ghost_architect":  # DDL beside its screens, OCR, the sandbox, the CLI
                text = page.inner_text("main")
                assert "CREATE TABLE" in text and "validity checks" in text
                assert "Offline there are no vision weights" in text and "What pixels cannot carry" in text
                assert "ATTACH is refused in the sandbox" in text and "OCR + text model" in text
                assert "lines recovered (of what pixels show)" in text
            if source.stem == "09_inside_gemma3":  # the stack from the config, the verdicts, the summary
                text = page.inner_text("main")
                assert "RoPE base global" in text and "C25" in text and "bits per parameter" in text
            if source.stem == "10_beyond_lora":  # the rank of the total update, blends, the ReLoRA claims
                text = page.inner_text("main")
                assert "effective rank of W_end - W_0" in text and "C32" in text and "set_adapter takes" in text
            if source.stem == "11_scale_out":  # the launch command, the checks, what was not measured
                text = page.inner_text("main")
                assert "accelerate launch --multi_gpu --num_processes" in text and "adapter SHA-256" in text
                assert "bit-identical to the uninterrupted run's: True" in text and "not measured" in text
                assert "FSDP2 + QLoRA on 2 CPU processes" in text and "4-bit base MiB per process" in text
        browser.close()
    assert image_outputs(executed / "chapters" / "01_concepts.ipynb") >= 5
    assert image_outputs(executed / "chapters" / "02_memory_budget.ipynb") >= 3
    assert image_outputs(executed / "chapters" / "04_trinity_training.ipynb") >= 1
    assert image_outputs(executed / "chapters" / "05_oom_ladder.ipynb") >= 1
    assert image_outputs(executed / "chapters" / "06_evaluate.ipynb") >= 1
    assert image_outputs(executed / "chapters" / "07_export.ipynb") >= 1
    assert image_outputs(executed / "chapters" / "08_ghost_architect.ipynb") >= 5
    assert image_outputs(executed / "chapters" / "09_inside_gemma3.ipynb") >= 11
    assert image_outputs(executed / "chapters" / "10_beyond_lora.ipynb") >= 4
    assert image_outputs(executed / "chapters" / "11_scale_out.ipynb") >= 1
