"""The package's shape: no import cycles, the library never imports the CLI."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_import_graph_has_no_cycles_and_no_upward_imports():
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "import_graph.py")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 cycles, 0 upward imports" in out.stdout
