"""Cost of the cascading randomisation sanity check per method on a run (what ``vebi evaluate``
adds with ``--sanity``, its default).

Per method: wall-clock and process CPU seconds of :func:`vebi.evaluate.sanity.cascading_randomisation`
on ``--images`` class-balanced test images (trained maps + one set per randomisation step), and
the total. CPU seconds are less affected by other jobs on the machine than wall-clock seconds (the
load average is printed).

    python benchmarks/bench_sanity.py RUN DATA [--images 16] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from vebi.evaluate.runner import _balanced_subset, resolve_split
from vebi.evaluate.sanity import cascading_randomisation, randomisation_steps
from vebi.methods import build_method, method_names
from vebi.methods.cam import default_cam_layer
from vebi.run import Run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("data")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    run = Run.open(args.run)
    model = run.model()
    dataset = run.dataset(resolve_split(args.data), with_index=False)
    images = torch.stack([dataset[i][0] for i in _balanced_subset(dataset.targets, args.images, 0)])
    layer = default_cam_layer(model, images)
    steps = randomisation_steps(model, images)
    print(f"{len(images)} images {tuple(images.shape[-2:])}, {len(steps)} randomisation steps, "
          f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}")
    print(f"{'method':<22} {'wall s':>8} {'CPU s':>8}")
    total_wall = total_cpu = 0.0
    for name in method_names():
        method = build_method(name, run.relevance, strict=False, num_features=3, layer=layer)
        wall, cpu = time.perf_counter(), time.process_time()
        cascading_randomisation(model, images, [method], seed=0)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        total_wall, total_cpu = total_wall + wall, total_cpu + cpu
        print(f"{name:<22} {wall:>8.1f} {cpu:>8.1f}")
    print(f"{'all methods':<22} {total_wall:>8.1f} {total_cpu:>8.1f}")


if __name__ == "__main__":
    main()
