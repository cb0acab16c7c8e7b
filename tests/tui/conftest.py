from __future__ import annotations

import pytest


@pytest.fixture
def config_dir(tmp_path, monkeypatch):
    """An empty user config folder (no keymap) unless a test writes one."""
    d = tmp_path / "config"
    d.mkdir()
    monkeypatch.setenv("TURBOSPEC_CONFIG_DIR", str(d))
    return d
