import subprocess
import sys

from turbospec.cli import main


def test_help_names_cache_folder(capsys):
    try:
        main(["--help"])
    except SystemExit as e:
        assert e.code == 0
    out = capsys.readouterr().out
    assert "TURBOSPEC_CACHE_DIR" in out


def test_console_entry_runs():
    r = subprocess.run([sys.executable, "-m", "turbospec.cli", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and "turbospec" in r.stdout
