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
