"""Where an evaluation's time goes, and what ``faithfulness_images`` saves: ``evaluate_run`` on one run
with deletion/insertion on every evaluated image and on a class-balanced subset, side by side.

Seconds per method (maps, localisation and deletion/insertion together), the ablation, the sanity
check and the total; the same options as the demo's evaluate stage (300 images, 20 curve steps,
sanity on 8 images) unless given.

    python benchmarks/bench_evaluate.py RUN DATA [--images 300] [--subsets all 60] [--threads N]

RUN: a run folder (e.g. ``runs/demo/run`` after ``vebi demo``), DATA: the an8Flower data folder
(its ``images/test`` and ``masks/test`` are used).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from vebi.evaluate.runner import evaluate_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("data", type=Path)
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sanity-images", type=int, default=8)
    parser.add_argument("--subsets", nargs="+", default=["all", "60"], help="faithfulness images: 'all' or a count")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    timings = {}
    for subset in args.subsets:
        result = evaluate_run(args.run, args.data / "images" / "test", masks=args.data / "masks" / "test",
                              max_images=args.images, steps=args.steps, sanity=args.sanity_images > 0,
                              sanity_images=max(args.sanity_images, 1), seed=0, progress=False,
                              faithfulness_images=None if subset == "all" else int(subset))
        timings[subset] = result.timings
    keys = list(next(iter(timings.values())))
    print(f"{args.images} images, {args.steps} curve steps, {torch.get_num_threads()} threads; seconds")
    header = f"{'faithfulness images':<22}" + "".join(f"{s:>10}" for s in args.subsets)
    print(header)
    print("-" * len(header))
    for key in keys:
        print(f"{key:<22}" + "".join(f"{timings[s].get(key, float('nan')):>10.1f}" for s in args.subsets))
    first = args.subsets[0]
    print(f"{'total / ' + first:<22}" + "".join(f"{timings[s]['total'] / timings[first]['total']:>10.2f}"
                                              for s in args.subsets))


if __name__ == "__main__":
    main()
