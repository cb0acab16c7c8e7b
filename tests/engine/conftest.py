import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tinymodel import TinySpec, write_tiny_gguf  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own weight cache folder (never the user's)."""
    monkeypatch.setenv("TURBOSPEC_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("tiny") / "tiny.gguf", TinySpec())


@pytest.fixture(scope="session")
def default_model_path():
    from turbospec.engine.loader import default_model_path

    return default_model_path()
