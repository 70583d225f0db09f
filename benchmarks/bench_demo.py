"""`vebi demo` end to end, this checkout against an earlier one, side by side: seconds per stage.

Each run is a fresh ``vebi demo`` into a new temporary folder, the command run from the tree's
sources in its own process (the allocator the command picks, tcmalloc, preloaded when the machine
has it; the wall time ends when the process has exited), the trees alternating
over ``--repeats``. Prints the median seconds of every stage as the demo recorded them
(``OUT/stages/*.json``), the whole run's wall time and the mean number of busy cores during it
(from ``/proc/stat``: how much of the machine the demo kept working, other jobs included), plus
the test accuracy and vebi's and Grad-CAM's mean IoU, so a faster version that changed the results
shows it. ``--before SRC`` is the ``src`` folder of an earlier checkout, e.g.::

    git worktree add /tmp/vebi-before bc57443
    python benchmarks/bench_demo.py --before /tmp/vebi-before/src [--repeats 2] [--quick] [--per-class 250]

Without ``--before`` it times this tree alone.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(HERE))

CHILD = """
import sys
from vebi.cli import run
sys.argv = ["vebi", "demo", *sys.argv[1:]]
run()
"""


def _busy_and_total() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine so far."""
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return sum(ticks) - idle, sum(ticks)


def run(src: Path, quick: bool, per_class: int) -> dict:
    from vebi.cli._malloc import find_tcmalloc

    out = Path(tempfile.mkdtemp(prefix="bench_demo_"))
    env = {**os.environ, "PYTHONPATH": str(src), "TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": str(1 << 60)}
    library = find_tcmalloc()
    if library:
        env["LD_PRELOAD"] = library
    try:
        busy0, total0 = _busy_and_total()
        start = time.perf_counter()
        args = ["-o", str(out), *(["--quick"] if quick else [])]
        args += ["--per-class", str(per_class)] if per_class else []
        child = subprocess.run([sys.executable, "-c", CHILD, *args], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
        if child.returncode:
            sys.exit(f"the demo of {src} failed:\n{child.stderr[-4000:]}")
        wall = time.perf_counter() - start
        busy1, total1 = _busy_and_total()
        seconds: dict[str, float] = {}  # per step, in the order the stages finished
        for path in sorted((out / "stages").glob("*.json"), key=lambda p: p.stat().st_mtime_ns):
            record = json.loads(path.read_text())
            seconds[record["step"]] = seconds.get(record["step"], 0.0) + record["seconds"]
        results = json.loads((out / "run" / "evaluation" / "results.json").read_text())
        iou = {row["method"]: row["iou_mean"] for row in results["summary"]}
        return {"stages": seconds, "wall": wall, "cores": (busy1 - busy0) / (total1 - total0) * os.cpu_count(),
                "accuracy": results["accuracy"], "vebi": iou["vebi"], "grad_cam": iou["grad_cam"]}
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, help="the src folder of an earlier checkout")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="the --quick profile")
    parser.add_argument("--per-class", type=int, default=0, help="renders per class (0: the profile's)")
    args = parser.parse_args()
    trees = {"before": args.before, "now": HERE} if args.before else {"now": HERE}
    runs: dict[str, list[dict]] = {name: [] for name in trees}
    print(f"load average at the start: {os.getloadavg()[0]:.2f}", flush=True)
    for _ in range(args.repeats):
        for name, src in trees.items():
            runs[name].append(run(src, args.quick, args.per_class))
            print(f"  {name}: {runs[name][-1]['wall']:.1f} s", flush=True)
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    steps = list(dict.fromkeys(k for results in runs.values() for r in results for k in r["stages"]))

    def median(name: str, get) -> float:
        return statistics.median(get(r) for r in runs[name])

    print(f"median of {args.repeats} run(s); seconds (explain: the five explain stages together)")
    header = f"{'':<22}" + "".join(f"{n:>10}" for n in trees)
    print(header)
    print("-" * len(header))
    for step in steps:
        print(f"{step:<22}" + "".join(f"{median(n, lambda r: r['stages'].get(step, 0.0)):>10.1f}" for n in trees))
    print(f"{'wall':<22}" + "".join(f"{median(n, lambda r: r['wall']):>10.1f}" for n in trees))
    print(f"{'busy cores (mean)':<22}" + "".join(f"{median(n, lambda r: r['cores']):>10.2f}" for n in trees))
    for key in ("accuracy", "vebi", "grad_cam"):
        label = "accuracy (evaluated)" if key == "accuracy" else f"{key} mean IoU"
        print(f"{label:<22}" + "".join(f"{median(n, lambda r: r[key]):>10.3f}" for n in trees))


if __name__ == "__main__":
    main()
