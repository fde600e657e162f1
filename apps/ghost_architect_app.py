"""Ghost Architect, the app: a screenshot (or a screen's visible text) in, SQLite DDL out, with its
tables, relationships and validity checks.

    .venv/bin/streamlit run apps/ghost_architect_app.py -- \
        --text-adapter output/default/ghost-text/adapter --vision-adapter output/default/ghost-vision/adapter

Every option of `python -m lib.ghost_architect` (models, adapters, --max-new-tokens) is accepted
after the `--`, plus --max-upload-mb. Without a GPU the vision model defaults to the tiny random
one, whose SQL is noise: the page says so.
"""

import argparse
import math
import os
import sys

import streamlit as st

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the course root, for lib

from lib.ghost_architect import GhostArchitect, UploadError, read_upload, schema_summary  # noqa: E402
from lib.sql_eval import validity_checks  # noqa: E402
from lib.vision import TINY_RANDOM, default_vision_model  # noqa: E402


def options() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--text-model", default="gemma-3-270m")
    parser.add_argument("--text-adapter")
    parser.add_argument("--vision-model")
    parser.add_argument("--vision-adapter")
    parser.add_argument("--max-new-tokens", type=int, default=320)
    parser.add_argument("--max-upload-mb", type=float, default=10.0)
    return parser.parse_args(sys.argv[1:])


@st.cache_resource
def architect(text_model, text_adapter, vision_model, vision_adapter, max_new_tokens) -> GhostArchitect:
    return GhostArchitect(text_model, text_adapter, vision_model, vision_adapter, max_new_tokens)


def show_result(sql: str) -> None:
    st.subheader("Generated SQL")
    st.code(sql or "-- (the model wrote no SQL)", language="sql")
    checks = validity_checks(sql)
    st.subheader("Validity checks")
    marks = {True: "pass", False: "FAIL", None: "not run"}
    st.table([{"check": c["check"], "result": marks[c["passed"]], "detail": c["detail"]} for c in checks])
    if checks[1]["passed"]:  # it executes: there are tables to summarise
        tables, relationships = schema_summary(sql)
        st.subheader("Tables")
        st.table(tables)
        st.subheader("Relationships")
        st.table(relationships) if len(relationships) else st.write("no foreign keys")


args = options()
vision_name = args.vision_model or default_vision_model()
model = architect(args.text_model, args.text_adapter, vision_name, args.vision_adapter, args.max_new_tokens)

st.set_page_config(page_title="Ghost Architect", layout="wide")
st.title("Ghost Architect: from a screen to its SQL schema")
st.caption(f"vision model: {vision_name} (adapter: {args.vision_adapter or 'none'}) · "
           f"text model: {args.text_model} (adapter: {args.text_adapter or 'none'})")
if vision_name == TINY_RANDOM:
    st.warning("The vision model is the tiny random-initialised Gemma 3 (no GPU here): screenshots go through "
               "the whole path, but the SQL it writes is noise. Use the visible-text tab for real answers.")

screenshot_tab, text_tab = st.tabs(["Screenshot", "Visible text"])
with screenshot_tab:
    # Streamlit refuses larger files in the browser; read_upload checks again (the CLI's path too).
    upload = st.file_uploader("Upload a UI screenshot (PNG, JPEG or WebP)", key="screenshot",
                              max_upload_size=max(1, math.ceil(args.max_upload_mb)))
    if upload is not None:
        try:
            image = read_upload(upload.name, upload.getvalue(), int(args.max_upload_mb * 2**20))
        except UploadError as error:
            st.error(str(error))
        else:
            st.image(image, caption=upload.name, width=480)
            with st.spinner("generating SQL from the screenshot"):
                show_result(model.from_images([image])[0])
with text_tab:
    text = st.text_area("Paste the screen's visible text (headings, field labels, column headers)", height=200)
    if st.button("Generate SQL from text"):
        if not text.strip():
            st.error("The text is empty: paste the labels and headings visible on the screen.")
        else:
            with st.spinner("generating SQL from the text"):
                show_result(model.from_text([text])[0])
