"""Ghost Architect, the app: a screenshot (or a screen's visible text) in, SQLite DDL out, with its
tables, relationships and validity checks.

    .venv/bin/streamlit run apps/ghost_architect_app.py -- --text-adapter output/default/ghost-ocr/adapter

Every option of `python -m lib.ghost_architect` (models, adapters, --max-new-tokens) is accepted
after the `--`. A screenshot goes through OCR + the text model unless --vision-model names a
vision checkpoint ('tiny-random' demonstrates that path with random weights: its SQL is noise,
and the page says so). The upload limit is Streamlit's own `server.maxUploadSize` (MB; 10 in
.streamlit/config.toml, `--server.maxUploadSize N` before the `--` changes it), which the server
enforces whatever the browser sends; the app checks the bytes again (`lib.ghost_architect.read_upload`).
"""

import argparse
import hashlib
import os
import sys

import streamlit as st

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the course root, for lib

from lib.ghost_architect import GhostArchitect, UploadError, read_upload, schema_summary  # noqa: E402
from lib.sql_eval import validity_checks  # noqa: E402
from lib.vision import TINY_RANDOM  # noqa: E402

MAX_TEXT_CHARS = 20_000  # a screen's text is a few hundred characters


def options() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--text-model", default="gemma-3-270m")
    parser.add_argument("--text-adapter")
    parser.add_argument("--vision-model")
    parser.add_argument("--vision-adapter")
    parser.add_argument("--max-new-tokens", type=int, default=320)
    return parser.parse_args(sys.argv[1:])


@st.cache_resource  # one instance for every session; its models load once, under its lock
def architect(text_model, text_adapter, vision_model, vision_adapter, max_new_tokens) -> GhostArchitect:
    return GhostArchitect(text_model, text_adapter, vision_model, vision_adapter, max_new_tokens)


@st.cache_data(max_entries=64, show_spinner=False)
def answer_for_upload(_model: GhostArchitect, digest: str, name: str, data: bytes, max_bytes: int):
    """The Answer for one uploaded file, cached by its content's digest: a rerun (any widget
    change) does not run the models again."""
    return _model.from_images([read_upload(name, data, max_bytes)])[0]


def show_result(answer) -> None:
    st.caption(f"answered by: {answer.path} · " + ", ".join(f"{k} {v:.1f} s" for k, v in answer.seconds.items()))
    if answer.screen_text is not None:
        with st.expander("What OCR read from the screenshot"):
            st.code(answer.screen_text or "(no text found)", language=None)
    st.subheader("Generated SQL")
    st.code(answer.sql or "-- (the model wrote no SQL)", language="sql")
    checks = validity_checks(answer.sql)
    st.subheader("Validity checks")
    marks = {True: "pass", False: "FAIL", None: "not run"}
    st.table([{"check": c["check"], "result": marks[c["passed"]], "detail": c["detail"]} for c in checks])
    if checks[1]["passed"]:  # it executes: there are tables to summarise
        tables, relationships = schema_summary(answer.sql)
        st.subheader("Tables")
        st.table(tables)
        st.subheader("Relationships")
        st.table(relationships) if len(relationships) else st.write("no foreign keys")


st.set_page_config(page_title="Ghost Architect", layout="wide")
st.title("Ghost Architect: from a screen to its SQL schema")
args = options()
try:
    model = architect(args.text_model, args.text_adapter, args.vision_model, args.vision_adapter, args.max_new_tokens)
except (OSError, ValueError, LookupError) as error:  # a bad adapter folder or model name, before any model loads
    st.error(f"Cannot start: {error}")
    st.stop()
max_upload_mb = st.get_option("server.maxUploadSize")
st.caption(f"screenshots: {model.screenshot_path} · pasted text: text model {args.text_model} "
           f"(adapter: {args.text_adapter or 'none'}) · uploads up to {max_upload_mb} MB")
if args.vision_model == TINY_RANDOM:
    st.warning("The vision model is the tiny random-initialised Gemma 3, chosen to demonstrate the vision path: "
               "screenshots go through the whole path, but the SQL it writes is noise.")

screenshot_tab, text_tab = st.tabs(["Screenshot", "Visible text"])
with screenshot_tab:
    upload = st.file_uploader("Upload a UI screenshot (PNG, JPEG or WebP)", key="screenshot")
    if upload is not None:
        data = upload.getvalue()
        try:
            image = read_upload(upload.name, data, max_upload_mb * 2**20)
        except UploadError as error:
            st.error(str(error))
        else:
            st.image(image, caption=upload.name, width=480)
            with st.spinner(f"generating SQL from the screenshot ({model.screenshot_path})"):
                show_result(answer_for_upload(model, hashlib.sha256(data).hexdigest(), upload.name, data,
                                              max_upload_mb * 2**20))
with text_tab:
    text = st.text_area("Paste the screen's visible text (headings, field labels, column headers)", height=200,
                        max_chars=MAX_TEXT_CHARS)
    if st.button("Generate SQL from text"):
        if not text.strip():
            st.error("The text is empty: paste the labels and headings visible on the screen.")
        else:
            with st.spinner("generating SQL from the text"):
                show_result(model.from_text([text])[0])
