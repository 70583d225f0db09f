"""Start-up cost of the command line: CPU seconds of `vebi --help` and `vebi collect --help`.

Each command runs in a fresh interpreter; the table gives the median over --repeats runs of the
child's user + system CPU time, warm (bytecode cached) and cold (an empty bytecode cache, as on
the first run after installing). A source tree to compare against (an older checkout) can be
given with --other SRC; its rows run from that tree's src/ folder side by side with this one's.

    .venv/bin/python benchmarks/bench_cli_start.py [--repeats 5] [--other /path/to/old/checkout]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = (["--help"], ["collect", "--help"])


def cpu_seconds(src: Path, args: list[str], cold: bool) -> float:
    env = {**os.environ, "PYTHONPATH": str(src)}
    with tempfile.TemporaryDirectory() as cache:
        if cold:
            env["PYTHONPYCACHEPREFIX"] = cache
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run([sys.executable, "-c", "from vebi.cli import run; run()", *args], env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--other", type=Path, help="another checkout to compare (its src/ is used)")
    a = parser.parse_args()
    trees = [("this tree", ROOT / "src")] + ([("other tree", a.other / "src")] if a.other else [])
    print(f"load average {os.getloadavg()[0]:.2f}; median of {a.repeats} runs, CPU seconds (user + sys)")
    print(f"{'tree':<11} {'command':<22} {'warm':>7} {'cold':>7}")
    for label, src in trees:
        for args in COMMANDS:
            cpu_seconds(src, args, cold=False)  # fill the bytecode cache
            warm = statistics.median(cpu_seconds(src, args, cold=False) for _ in range(a.repeats))
            cold = statistics.median(cpu_seconds(src, args, cold=True) for _ in range(a.repeats))
            print(f"{label:<11} {'vebi ' + ' '.join(args):<22} {warm:7.2f} {cold:7.2f}")


if __name__ == "__main__":
    main()
