"""Seconds of ``vebi explain`` (``vebi.pipeline.explain_files``) on the same files at several batch sizes.

One vebi explanation runs k backward passes per batch, each from the deepest seed layer of any of the
batch's images: a batch costs its deepest image's depth for every image in it, where images explained
one at a time stop at their own features. Which batch size is fastest therefore depends on the fit,
not only on the model. Batch sizes run interleaved in one process after a first, uncounted call;
the table gives the median seconds of ``--repeats`` calls and the seconds per image, panels included::

    python benchmarks/bench_explain_batch.py runs/photos photos/*/*.jpg --batches 1 4 16 --repeats 5

The ``vebi`` command runs on tcmalloc (see the README); to time what it does, run this the same way,
``LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 python benchmarks/...``. Under glibc's
allocator large batches of 224-px images are slower (MobileNetV2, batch 16: 1.4x batch 1).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from vebi.pipeline import explain_files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a run folder with a relevance fit")
    parser.add_argument("images", type=Path, nargs="+", help="image files (all explained in each call)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--method", default="vebi")
    parser.add_argument("--device", default="cpu")
    a = parser.parse_args()
    times: dict[int, list[float]] = {b: [] for b in a.batches}
    with tempfile.TemporaryDirectory() as out:
        explain_files(a.run, a.images[:1], out=out, method=a.method, device=a.device)  # loads the libraries
        skipped = sum(done.explanation is None for done in
                      explain_files(a.run, a.images, out=out, method=a.method, device=a.device))
        for _ in range(a.repeats):
            for b in a.batches:
                start = time.perf_counter()
                explain_files(a.run, a.images, out=out, method=a.method, device=a.device, batch_size=b)
                times[b].append(time.perf_counter() - start)
    n = len(a.images)
    print(f"{a.run}: {n} images ({skipped} not explainable by {a.method}), {a.device}, "
          f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f} at the end")
    print(f"{'batch':>5} {'median s':>9} {'s / image':>10} {'/ batch ' + str(a.batches[0]):>12}  all runs")
    first = statistics.median(times[a.batches[0]])
    for b in a.batches:
        med = statistics.median(times[b])
        print(f"{b:>5} {med:9.2f} {med / n:10.3f} {med / first:12.2f}  {' '.join(f'{t:.2f}' for t in times[b])}")


if __name__ == "__main__":
    main()
