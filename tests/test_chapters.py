"""nbdev's discipline: every chapter runs (papermill, smoke parameters), the book builds with
warnings as errors, and a real browser shows each chapter's figures."""

import nbformat
import pytest

from tools.course import SMOKE_PARAMETERS, build_book, chapters, execute_concurrently, repository

CHROMIUM = "/usr/bin/chromium"

# pytest.ini's 1500 s limit counts a test's fixture setup, and the module fixture below runs every
# chapter: 24 minutes of smoke runs on a 2-core AVX2 CPU in float32, two at a time beside the other
# xdist worker (38 minutes one at a time on a slower VM of that kind). That limit interrupted this
# module twice (a KeyboardInterrupt inside whichever chapter was running at 25 minutes).
pytestmark = pytest.mark.timeout(3600)


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """All chapters executed with smoke parameters, two at a time, each after the chapters it
    reads from; a failing cell fails here."""
    folder = tmp_path_factory.mktemp("book")
    out = tmp_path_factory.mktemp("output")
    execute_concurrently(folder, SMOKE_PARAMETERS | {"*": SMOKE_PARAMETERS["*"] | {"output_dir": str(out)}})
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
        assert notebook.metadata["papermill"]["parameters"]["run_name"] == "smoke"


def test_training_progress_is_one_line_updated_in_place(executed):
    notebook = nbformat.read(executed / "chapters" / "04_trinity_training.ipynb", as_version=4)
    shown = [o["data"]["text/html"] for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", [])
             if "<progress" in o.get("data", {}).get("text/html", "")]
    steps = SMOKE_PARAMETERS["04_trinity_training"]["max_steps"]
    assert len(shown) == 1 and f"done: step {steps}/{steps}" in shown[0], shown


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
