import os

# `make test` runs the suite in 2 pytest-xdist workers on a 2-core machine. Each worker computes in
# one thread: two processes of 2 OpenMP threads each on 2 cores spin at every barrier (measured on
# this course's machine: small matrix products 3x slower than one thread each, 512x640 @ 640x2048
# products 1.6x slower), and the processes a test starts (papermill kernels, training runs) inherit it.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"

import pytest

from helpers import make_tiny_gemma
from lib.model import ModelSource, load_tokenizer, resolve_model


@pytest.fixture(scope="session")
def tokenizer():
    """The real Gemma 3 tokenizer (rebuilt from the embedded GGUF, official chat template)."""
    return load_tokenizer(resolve_model("gemma-3-270m"))


@pytest.fixture(scope="session")
def tiny_source(tmp_path_factory) -> ModelSource:
    folder = make_tiny_gemma(tmp_path_factory.mktemp("tiny-gemma"))
    return ModelSource("tiny", str(folder), "local")


# pytest-xdist hands out whole files (`make test`: --dist loadfile --no-loadscope-reorder) in
# collection order. The two longest go first, so that neither worker is left with a long file at
# the end while the other waits: every chapter at smoke size, then the per-parameter chapter runs.
LONGEST_FIRST = ("test_chapters.py", "test_parameters.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST_FIRST)))  # stable: the rest keep their order
