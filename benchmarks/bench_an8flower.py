"""an8Flower rendering throughput and the trained networks' test accuracies.

(a) images per second at 112 x 112 with masks (image + designated mask + part label map written
    as PNGs), with 2 worker processes and, side by side, in 1 process (target: >= 20 images/s with
    2), pool start-up included; and the CPU time per image, which other jobs on the machine do not
    change (the load average is printed: they do slow the wall-clock rates).
(b) with --train: generate both variants at the default sizes (500 per class, 112 px; resumed if
    already in --data) and train the default An8Net on each; prints test accuracy and times
    (target >= 0.95 on both). Takes minutes.

(c) with --before SRC (the ``src`` folder of an earlier checkout): only the 2-process rate, this tree
    and that one alternately, each in its own process, ``--repeats`` times; prints both and their ratio.

    python benchmarks/bench_an8flower.py [--images 240] [--train --data DIR --threads 1]
    python benchmarks/bench_an8flower.py --before /tmp/vebi-before/src --images 300 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vebi.an8flower import SINGLE_6C, VARIANTS, DatasetConfig, generate
from vebi.an8flower.train import TrainConfig, train


def throughput(images: int, workers: int, size: int) -> tuple[float, float]:
    """(images per wall-clock second, CPU seconds per image summed over all processes)."""
    per_class = max(2, images // len(SINGLE_6C.classes))
    count = per_class * len(SINGLE_6C.classes)
    root = Path(tempfile.mkdtemp(prefix="bench_an8_"))
    try:
        cpu0 = _cpu_seconds()
        start = time.perf_counter()
        generate(root / "ds", DatasetConfig(SINGLE_6C, per_class=per_class, size=size, seed=0), workers=workers,
                 progress=False)
        wall = time.perf_counter() - start
        return count / wall, (_cpu_seconds() - cpu0) / count
    finally:
        shutil.rmtree(root)


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # worker processes, once reaped
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def side_by_side(before: Path, images: int, size: int, repeats: int) -> None:
    """The 2-process rate of this tree and of ``before``, alternately, each in a fresh process."""
    trees = {"this tree": Path(__file__).resolve().parents[1] / "src", "before": before.resolve()}
    rates: dict[str, list[float]] = {name: [] for name in trees}
    cpu: dict[str, list[float]] = {name: [] for name in trees}
    for _ in range(repeats):
        for name, src in trees.items():
            env = {**os.environ, "PYTHONPATH": str(src)}
            out = subprocess.run([sys.executable, __file__, "--child", "--images", str(images), "--size", str(size)],
                                 env=env, check=True, capture_output=True, text=True)
            rate, seconds = json.loads(out.stdout.strip().splitlines()[-1])
            rates[name].append(rate)
            cpu[name].append(seconds)
    print(f"\n{f'{size} px + masks, 2 processes, median of {repeats}':<44}{'images/s':>10}{'CPU ms/image':>14}")
    for name in trees:
        print(f"{name:<44}{statistics.median(rates[name]):>10.1f}{1000 * statistics.median(cpu[name]):>14.1f}")
    ratio = statistics.median(rates["this tree"]) / statistics.median(rates["before"])
    print(f"{'rate, this tree / before':<44}{ratio:>10.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=240, help="images rendered per throughput run")
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--train", action="store_true", help="also generate the default datasets and train (minutes)")
    parser.add_argument("--data", type=Path, default=Path("an8flower-bench"), help="where the --train datasets go")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for training")
    parser.add_argument("--before", type=Path, help="src folder of an earlier checkout: rates side by side")
    parser.add_argument("--repeats", type=int, default=3, help="alternations with --before")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print(json.dumps(throughput(args.images, 2, args.size)))
        return
    if args.before is not None:
        print(f"load average before: {' '.join(f'{v:.1f}' for v in os.getloadavg())} on {os.cpu_count()} CPUs")
        side_by_side(args.before, args.images, args.size, args.repeats)
        print(f"load average after: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
        return

    print(f"load average before: {' '.join(f'{v:.1f}' for v in os.getloadavg())} on {os.cpu_count()} CPUs")
    two, two_cpu = throughput(args.images, 2, args.size)
    one, one_cpu = throughput(args.images, 1, args.size)
    cores = os.cpu_count() or 1
    print(f"\n{'renderer, ' + str(args.size) + ' px + masks':<40}{'images/s':>10}{'CPU ms/image':>14}")
    print(f"{'2 worker processes':<40}{two:>10.1f}{1000 * two_cpu:>14.1f}")
    print(f"{'1 process (Mitsuba threads)':<40}{one:>10.1f}{1000 * one_cpu:>14.1f}")
    print(f"{f'CPU-bound rate on {cores} idle cores':<40}{cores / two_cpu:>10.1f}")
    print(f"{'target (2 worker processes)':<40}{'>= 20':>10}   {'met' if two >= 20 else 'NOT met (see load)'}")

    if not args.train:
        return
    print(f"\n{'variant':<12}{'images':>8}{'render s':>10}{'train s':>9}{'epochs':>8}{'test acc':>10}{'train acc':>11}")
    for name in ("single-6c", "double-12c"):
        config = DatasetConfig(VARIANTS[name], per_class=500, size=112, seed=0)
        gen = generate(args.data / name, config, workers=2, progress=False)
        result = train(args.data / name, args.data / f"{name}-model", TrainConfig(), threads=args.threads,
                       progress=False)
        print(f"{name:<12}{gen.total:>8}{gen.seconds:>10.0f}{result.seconds:>9.0f}{len(result.history):>8}"
              f"{result.test_accuracy:>10.4f}{result.train_accuracy:>11.4f}")
    print(f"load average after: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
