"""Fixed cost of the command line: CPU seconds of `vebi --help`, `vebi collect --help`, and of a
command that loads torch and does almost nothing else (`vebi layers` of the an8Flower network).

Each command runs in a fresh interpreter; the table gives the median over --repeats runs of the
child's user + system CPU time, warm (bytecode cached) and, for the help pages, cold (an empty
bytecode cache, as on the first run after installing). Python may write bytecode even where
PYTHONDONTWRITEBYTECODE is set (as on the machine these figures were taken on): otherwise every run
would compile vebi's own modules, which an installed vebi does once. The torch row is the floor of every real
command: importing torch and torchvision, and leaving. A source tree to compare against (an older
checkout) can be given with --other SRC; its rows run from that tree's src/ folder side by side
with this one's, the two trees alternating run by run. --command adds a row for any command line
(repeatable; run in the current folder), e.g. a report of an existing run, or one that must fail
(the exit column shows each command's exit status: 2 for a usage error or bad input).

    .venv/bin/python benchmarks/bench_cli_start.py [--repeats 5] [--other /path/to/old/checkout]
    .venv/bin/python benchmarks/bench_cli_start.py --other OLD --command report runs/photos
    .venv/bin/python benchmarks/bench_cli_start.py --other OLD --command fit no/such/run
    .venv/bin/python benchmarks/bench_cli_start.py --command "collect torchvision:resnet18 no/such -o x"
"""

from __future__ import annotations

import argparse
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# (arguments, also measured cold)
COMMANDS = ((["--help"], True), (["collect", "--help"], True), (["layers", "vebi.an8flower.net:an8net"], False))


def cpu_and_wall(src: Path, args: list[str], cold: bool) -> tuple[float, float, int]:
    """(CPU seconds, wall seconds, exit status) of one run."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # warm: every module's bytecode written once and read after
    with tempfile.TemporaryDirectory() as cache:
        if cold:
            env["PYTHONPYCACHEPREFIX"] = cache
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", "from vebi.cli import run; run()", *args], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode not in (0, 2):  # 2: the command's own clear error; anything else is a crash
        raise SystemExit(f"vebi {' '.join(args)} exited with {done.returncode}:\n{done.stderr}")
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), wall, done.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--other", type=Path, help="another checkout to compare (its src/ is used)")
    parser.add_argument("--command", nargs="+", action="append", default=[], metavar="ARG",
                        help="another vebi command line to time (warm only); repeatable")
    a = parser.parse_args()
    trees = [("this tree", ROOT / "src")] + ([("other tree", a.other / "src")] if a.other else [])
    print(f"load average {os.getloadavg()[0]:.2f}; median of {a.repeats} runs, CPU seconds (user + sys), "
          "and the wall seconds of the warm runs")
    # one quoted argument is split as a shell would: the way to give options (-o X) to the timed command
    commands = (*COMMANDS, *((shlex.split(c[0]) if len(c) == 1 else list(c), False) for c in a.command))
    width = max(len("vebi " + " ".join(args)) for args, _ in commands)
    print(f"{'tree':<11} {'command':<{width}} {'warm':>6} {'cold':>6} {'wall':>6} {'exit':>4}")
    for args, with_cold in commands:
        for _, src in trees:
            cpu_and_wall(src, args, cold=False)  # fill the bytecode cache
        runs: dict[str, list[tuple[float, float, int]]] = {label: [] for label, _ in trees}
        colds: dict[str, list[float]] = {label: [] for label, _ in trees}
        for _ in range(a.repeats):
            for label, src in trees:
                runs[label].append(cpu_and_wall(src, args, cold=False))
                if with_cold:
                    colds[label].append(cpu_and_wall(src, args, cold=True)[0])
        for label, _ in trees:
            warm = statistics.median(cpu for cpu, _, _ in runs[label])
            wall = statistics.median(w for _, w, _ in runs[label])
            cold = f"{statistics.median(colds[label]):6.2f}" if with_cold else f"{'-':>6}"
            print(f"{label:<11} {'vebi ' + ' '.join(args):<{width}} {warm:6.2f} {cold} {wall:6.2f} {runs[label][-1][2]:>4}")
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
