"""Where turbospec keeps its files (weight cache, user config)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Weight cache folder: $TURBOSPEC_CACHE_DIR, else $XDG_CACHE_HOME/turbospec, else ~/.cache/turbospec."""
    env = os.environ.get("TURBOSPEC_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "turbospec"


def config_dir() -> Path:
    """User config folder (keymaps ...): $TURBOSPEC_CONFIG_DIR, else $XDG_CONFIG_HOME/turbospec."""
    env = os.environ.get("TURBOSPEC_CONFIG_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CONFIG_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".config"
    return base / "turbospec"
