"""One module per architecture; ``ARCHS`` maps GGUF ``general.architecture`` to the class."""

from __future__ import annotations

from turbospec.engine.models.gemma3 import Gemma3

ARCHS = {"gemma3": Gemma3}
