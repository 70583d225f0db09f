"""Time of ``vebi explain`` on files (``vebi.pipeline.explain_files``), this checkout against an earlier one.

Explains the demo's report images (``DEMO/stages/explain.json``: 12 test images) with each
``--methods`` entry, once per source tree in its own process, interleaved over ``--repeats``; a first
call in each process loads the libraries and is not counted. Prints the median seconds per call,
the part spent writing the PNG panels, and the ratio to the first tree, e.g.::

    git worktree add /tmp/vebi-before ecc0299
    python benchmarks/bench_explain_files.py runs/demo --before /tmp/vebi-before/src --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parents[1] / "src"

CHILD = """
import json, sys, time
import torch
import vebi.explanation.panel as panel
from vebi.pipeline import explain_files
run, out, method, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
images = json.loads(sys.argv[5])
if threads:
    torch.set_num_threads(threads)
spent = [0.0]
original = panel.write_panel
def timed(*args, **kwargs):
    start = time.perf_counter()
    original(*args, **kwargs)
    spent[0] += time.perf_counter() - start
panel.write_panel = timed
explain_files(run, images, method=method, out=out + "-warm")
spent[0] = 0.0
start = time.perf_counter()
explain_files(run, images, method=method, out=out)
print(json.dumps({"seconds": time.perf_counter() - start, "panels": spent[0]}))
"""


def run(src: Path, demo: Path, out: Path, method: str, threads: int, images: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src)}
    done = subprocess.run([sys.executable, "-c", CHILD, str(demo / "run"), str(out), method, str(threads),
                           json.dumps(images)], env=env, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("demo", type=Path, help="a folder written by `vebi demo --out DEMO`")
    parser.add_argument("--before", type=Path, help="the src folder of an earlier checkout")
    parser.add_argument("--methods", nargs="+", default=["vebi", "grad_cam"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    args = parser.parse_args()
    images = json.loads((args.demo / "stages" / "explain.json").read_text())["options"]["images"]
    trees = {"before": args.before, "now": HERE} if args.before else {"now": HERE}
    runs: dict[tuple[str, str], list[dict]] = {(t, m): [] for t in trees for m in args.methods}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for method in args.methods:
                for tree, src in trees.items():
                    out = Path(tmp) / f"{tree}-{method}-{r}"
                    runs[(tree, method)].append(run(src, args.demo, out, method, args.threads, images))
    print(f"{len(images)} images of {args.demo}; median of {args.repeats} run(s), seconds per call")
    header = f"{'method':<12} {'tree':<8} {'seconds':>8} {'panels':>8} {'/ ' + next(iter(trees)):>10}"
    print(header)
    print("-" * len(header))
    for method in args.methods:
        first = statistics.median(r["seconds"] for r in runs[(next(iter(trees)), method)])
        for tree in trees:
            seconds = statistics.median(r["seconds"] for r in runs[(tree, method)])
            panels = statistics.median(r["panels"] for r in runs[(tree, method)])
            print(f"{method:<12} {tree:<8} {seconds:>8.2f} {panels:>8.2f} {seconds / first:>10.2f}")


if __name__ == "__main__":
    main()
