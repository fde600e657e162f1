"""The Streamlit app for real: its server on localhost, headless Chromium uploading files, the test
reading what the page shows. A screenshot goes through OCR + the text model (the default path)."""

import io
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from helpers import ROOT
from lib.ghost_dataset import build_dataset

CHROMIUM = "/usr/bin/chromium"
WAIT_MS = 180_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app(tmp_path_factory, tiny_source):
    port = free_port()
    log = tmp_path_factory.mktemp("app") / "streamlit.log"
    command = [sys.executable, "-m", "streamlit", "run", str(ROOT / "apps" / "ghost_architect_app.py"),
               "--server.headless", "true", "--server.port", str(port), "--server.address", "127.0.0.1",
               "--browser.gatherUsageStats", "false", "--server.maxUploadSize", "1", "--",
               "--text-model", tiny_source.path_or_id, "--max-new-tokens", "8"]
    with open(log, "w") as out:
        server = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"streamlit did not start:\n{log.read_text()}")
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture(scope="module")
def page(app):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 1600})
        page.set_default_timeout(WAIT_MS)
        page.goto(app)
        page.get_by_text("Ghost Architect: from a screen to its SQL schema").wait_for()
        yield page
        browser.close()


def upload(page, name: str, data: bytes, mime: str = "image/png") -> None:
    page.locator("input[type=file]").set_input_files(files=[{"name": name, "mimeType": mime, "buffer": data}])


def noise_png(width: int, height: int) -> bytes:
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_screenshot_gives_sql_through_ocr(page, tmp_path):
    example = build_dataset(tmp_path, examples=6, seed=4, screens_per_schema=2, ocr=False)[0]
    upload(page, "orders-form.png", (tmp_path / example.image).read_bytes())
    page.get_by_text("foreign keys point to created columns").wait_for()  # the last row of the checks
    body = page.inner_text("body")
    assert "Generated SQL" in body and "orders-form.png" in body
    for check in ("parses (sqlglot, SQLite)", "executes in SQLite", "every table has a primary key"):
        assert check in body
    assert "answered by: OCR + text model" in body and "tiny random" not in body
    page.get_by_text("What OCR read from the screenshot").click()
    heading = example.screen_text.splitlines()[0].lstrip("# ")  # the screen's heading, read from its pixels
    page.get_by_text(heading, exact=False).first.wait_for()
    assert heading in page.inner_text("body")


def test_the_server_refuses_an_upload_over_its_limit(page, app):
    """The browser checks the size too, so the request is sent as the browser would send it, with
    the page's own session and XSRF token, but from outside the widget: the server must refuse it."""
    with page.expect_request(lambda r: "/_stcore/upload_file/" in r.url and r.method == "PUT") as request:
        upload(page, "small.png", noise_png(40, 40))
    sent = request.value
    url = sent.url.rsplit("/", 1)[0] + "/oversized-file"
    response = page.request.put(url, headers={k: v for k, v in sent.headers.items() if k.lower().startswith("x-")},
                                multipart={"file": {"name": "big.png", "mimeType": "image/png",
                                                    "buffer": bytes(3 * 2**20)}})
    assert response.status == 413, (response.status, response.text())


@pytest.mark.parametrize("name, data, message", [
    ("notes.png", b"CREATE TABLE t (x INT);", "notes.png: not an image"),
    ("empty.png", b"", "empty.png: the file is empty"),
    ("huge.png", noise_png(1200, 900), "File must be 1.0MB or smaller"),  # the browser's check of the same limit
])
def test_bad_uploads_get_a_clear_message(page, name, data, message):
    assert len(data) > 2**20 or name != "huge.png"
    upload(page, name, data)
    page.get_by_text(message).wait_for()
    # The previous result is shown stale while the script reruns, then removed: no SQL for a bad file.
    page.get_by_text("Generated SQL").wait_for(state="detached", timeout=30_000)


def test_pasted_text_gives_sql(page):
    page.get_by_role("tab", name="Visible text").click()
    page.get_by_role("button", name="Generate SQL from text").click()
    page.get_by_text("The text is empty").wait_for()
    page.get_by_role("textbox").fill("# Books\nfield: Title * [text max 200]\nfield: Author [select]")
    assert "/20000" in page.inner_text("body")  # the text area counts against its length limit
    page.get_by_role("button", name="Generate SQL from text").click()
    page.get_by_text("foreign keys point to created columns").last.wait_for()
    body = page.inner_text("body")
    assert "Generated SQL" in body and "parses (sqlglot, SQLite)" in body
