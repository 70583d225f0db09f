"""CPU time lost to page faults with glibc's malloc, against another allocator preloaded (tcmalloc).

glibc serves each block over 32 MiB (and, by its dynamic threshold, many smaller ones) with a fresh
``mmap`` and unmaps it when freed, so the large activations of every batch are paged in and zeroed
anew; tcmalloc keeps freed memory for the next batch. Each setting runs in its own process (an
allocator is chosen at start), alternately over ``--repeats``: no-grad forward passes of a
random-weight torchvision model at ``--size`` px in channels-last order (how vebi runs CPU
models) at each ``--batches`` size, and one gradient pass (forward + backward to the input) at the
largest batch. Prints per image: wall milliseconds,
minor page faults, kernel (system) milliseconds, and the wall-time ratio to glibc, e.g.::

    apt-get install libtcmalloc-minimal4
    python benchmarks/bench_allocator.py --model mobilenet_v2 resnet50 --batches 1 8 32
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = """
import json, resource, sys, time
import torch, torchvision
model_name, size, calls, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[4]), int(sys.argv[5])
batches = json.loads(sys.argv[3])
if threads:
    torch.set_num_threads(threads)
torch.manual_seed(0)
model = getattr(torchvision.models, model_name)(weights=None).eval().to(memory_format=torch.channels_last)
def measure(step, b):
    x = torch.randn(b, 3, size, size).contiguous(memory_format=torch.channels_last)
    step(x)
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(calls):
        step(x)
    wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    n = calls * b
    return {"ms": 1000 * wall / n, "faults": (r1.ru_minflt - r0.ru_minflt) / n,
            "sys_ms": 1000 * (r1.ru_stime - r0.ru_stime) / n}
def forward(x):
    with torch.no_grad():
        model(x)
def gradient(x):
    x = x.clone().requires_grad_(True)
    model(x)[:, 0].sum().backward()
rows = {f"forward b{b}": measure(forward, b) for b in batches}
rows[f"gradient b{max(batches)}"] = measure(gradient, max(batches))
print(json.dumps(rows))
"""


TCMALLOC = ("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4", "/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4")


def run(preload: str | None, model: str, size: int, batches: list[int], calls: int, threads: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    env.update({"LD_PRELOAD": preload} if preload else {})
    done = subprocess.run([sys.executable, "-c", CHILD, model, str(size), json.dumps(batches), str(calls),
                           str(threads)], env=env, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs="+", default=["mobilenet_v2"])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--calls", type=int, default=4, help="timed calls per row and process")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    parser.add_argument("--preload", help="the allocator library to compare (default: Debian's tcmalloc_minimal)")
    args = parser.parse_args()
    preload = args.preload or next((p for p in TCMALLOC if Path(p).is_file()), None)
    if preload is None or not Path(preload).is_file():
        sys.exit(f"no allocator library at {preload or ' or '.join(TCMALLOC)}: apt-get install libtcmalloc-minimal4, "
                 "or pass --preload PATH")
    settings = {"glibc": None, Path(preload).name.split(".")[0].removeprefix("lib"): preload}
    print(f"{args.size} px, channels-last, median of {args.repeats} process(es) per setting; per image")
    header = (f"{'model':<13} {'pass':<13} {'malloc':<17} {'ms':>8} {'faults':>8} {'sys ms':>8} "
              f"{'/ glibc':>8}")
    print(header)
    print("-" * len(header))
    for model in args.model:
        runs: dict[str, list[dict]] = {s: [] for s in settings}
        for _ in range(args.repeats):
            for s, library in settings.items():
                runs[s].append(run(library, model, args.size, args.batches, args.calls, args.threads))
        for row in runs["glibc"][0]:
            first = statistics.median(r[row]["ms"] for r in runs["glibc"])
            for s in settings:
                ms, faults, sys_ms = (statistics.median(r[row][k] for r in runs[s]) for k in ("ms", "faults", "sys_ms"))
                print(f"{model:<13} {row:<13} {s:<17} {ms:>8.1f} {faults:>8.0f} {sys_ms:>8.1f} {ms / first:>8.2f}")


if __name__ == "__main__":
    main()
