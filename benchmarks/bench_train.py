"""Time of ``vebi train`` on an an8Flower folder, this checkout against an earlier one, side by side.

Trains the demo's network (:class:`vebi.an8flower.train.TrainConfig` defaults: 12 epochs, batch 64)
once per source tree and seed, each in its own process, interleaved over ``--repeats``; prints the
median seconds and the test accuracy per tree and seed. ``--before SRC`` is the ``src`` folder of an
earlier checkout, e.g.::

    git worktree add /tmp/vebi-before 95092cd
    python benchmarks/bench_train.py runs/demo/data --before /tmp/vebi-before/src [--repeats 2] [--seeds 0 1]

The trained models land in a temporary folder and are deleted afterwards.
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
import json, sys
from vebi.an8flower.train import TrainConfig, train
r = train(sys.argv[1], sys.argv[2], TrainConfig(epochs=int(sys.argv[3]), seed=int(sys.argv[4])), progress=False)
print(json.dumps({"seconds": r.seconds, "test_accuracy": r.test_accuracy}))
"""


def run(src: Path, data: Path, out: Path, epochs: int, seed: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src)}
    done = subprocess.run([sys.executable, "-c", CHILD, str(data), str(out), str(epochs), str(seed)], env=env,
                          check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="an an8Flower folder (images/train, images/test), e.g. DEMO/data")
    parser.add_argument("--before", type=Path, help="the src folder of an earlier checkout")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    trees = {"before": args.before, "now": HERE} if args.before else {"now": HERE}
    runs: dict[tuple[str, int], list[dict]] = {(n, s): [] for n in trees for s in args.seeds}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for seed in args.seeds:
                for name, src in trees.items():
                    runs[(name, seed)].append(run(src, args.data, Path(tmp) / f"{name}-{seed}-{r}", args.epochs, seed))
    print(f"{args.data}: {args.epochs} epochs, median of {args.repeats} run(s)")
    header = f"{'tree':<8} {'seed':>4} {'seconds':>9} {'test acc':>9} {'/ ' + next(iter(trees)):>10}"
    print(header)
    print("-" * len(header))
    for seed in args.seeds:
        first = statistics.median(r["seconds"] for r in runs[(next(iter(trees)), seed)])
        for name in trees:
            seconds = statistics.median(r["seconds"] for r in runs[(name, seed)])
            accuracy = runs[(name, seed)][-1]["test_accuracy"]
            print(f"{name:<8} {seed:>4} {seconds:>9.1f} {accuracy:>9.3f} {seconds / first:>10.2f}")


if __name__ == "__main__":
    main()
