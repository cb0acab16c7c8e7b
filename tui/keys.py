"""Key bindings of `turbospec top` (each with an id) and the user's keymap file.

The keymap file is ``<config_dir>/keymap.toml`` (``turbospec.paths.config_dir()``)::

    # binding id = "comma-separated keys" (Textual key names)
    [keymap]
    "top.pause" = "space,p"
    "top.quit" = "q,ctrl+q"
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from turbospec.errors import UserError
from turbospec.paths import config_dir

KEYMAP_FILE = "keymap.toml"


@dataclass(frozen=True)
class Key:
    id: str
    keys: str
    action: str
    description: str
    show: bool = True


KEYS: tuple[Key, ...] = (
    Key("top.pause", "space,p", "toggle_pause", "pause/resume"),
    Key("top.reset_window", "r", "reset_window", "reset window"),
    Key("top.window_longer", "plus,equals_sign", "window(1)", "window +", show=False),
    Key("top.window_shorter", "minus,underscore", "window(-1)", "window −", show=False),
    Key("top.next_trace", "right_square_bracket,n", "switch_trace(1)", "next trace"),
    Key("top.prev_trace", "left_square_bracket", "switch_trace(-1)", "previous trace", show=False),
    Key("top.compare", "c", "toggle_compare", "compare"),
    Key("top.theme", "t", "toggle_theme", "dark/light"),
    Key("top.help", "question_mark,h,f1", "help", "help"),
    Key("top.quit", "q", "quit", "quit"),
)
KEY_IDS = {k.id for k in KEYS}


def keymap_path() -> Path:
    return config_dir() / KEYMAP_FILE


def load_keymap(path: Path | None = None) -> dict[str, str]:
    """The user's remapping {binding id: keys}; {} when the file does not exist."""
    p = keymap_path() if path is None else path
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read keymap {str(p)!r}: {e}; fix or remove the file") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"keymap {str(p)!r} is not valid TOML ({e}); fix or remove the file") from None
    table = data.get("keymap", {})
    if not isinstance(table, dict):
        raise UserError(f"keymap {str(p)!r}: [keymap] must be a table of \"binding id\" = \"keys\"")
    out: dict[str, str] = {}
    for k, v in table.items():
        if k not in KEY_IDS:
            raise UserError(f"keymap {str(p)!r}: unknown binding id {k!r}; known ids: {', '.join(sorted(KEY_IDS))}")
        if not isinstance(v, str) or not v.strip():
            raise UserError(f"keymap {str(p)!r}: {k!r} must be a non-empty string of comma-separated keys")
        out[k] = v.replace(" ", "")
    return out
