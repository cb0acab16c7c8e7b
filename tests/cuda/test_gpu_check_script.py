"""tests/gpu/check.py runs end to end through the host harness (--emu), so it cannot rot
between the rare runs on a GPU machine."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

CHECK = Path(__file__).resolve().parents[1] / "gpu" / "check.py"


def test_check_script_emu():
    r = subprocess.run([sys.executable, str(CHECK), "--emu"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 failed" in r.stdout and "FAIL " not in r.stdout


def test_check_script_without_gpu_says_so():
    if importlib.util.find_spec("cupy") is not None:
        pytest.skip("CuPy is installed: this machine may have a GPU")
    r = subprocess.run([sys.executable, str(CHECK)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "no usable CUDA device" in r.stderr and "Traceback" not in r.stderr
