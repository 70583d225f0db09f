"""Collection overhead and memory.

(a) time of `vebi.core.collect` over a fixed set of batches divided by a plain `torch.no_grad()`
    forward over the same batches (torchvision VGG-11, weights=None, 64 x 64, batch 32),
    interleaved repeats, median ratio (target <= 1.15);
(c) peak resident memory of a collection pass over N = 2,000 and N = 20,000 images, each in a
    fresh process (images are generated per batch, never stored): must not grow with N.

    python benchmarks/bench_collect.py [--batches 12] [--repeats 3] [--small]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch
import torchvision

from vebi.core.collect import collect


def _vgg11() -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.vgg11(weights=None).eval()


def overhead(batches: int, repeats: int, size: int, batch_size: int) -> dict[str, float]:
    model = _vgg11()
    g = torch.Generator().manual_seed(0)
    data = [(torch.rand(batch_size, 3, size, size, generator=g), torch.randint(0, 1000, (batch_size,), generator=g))
            for _ in range(batches)]
    with torch.no_grad():  # warm-up of both paths
        model(data[0][0])
    collect(model, data[:1], top_k=100, progress=False)
    plain_t, collect_t = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        with torch.no_grad():
            for images, _ in data:
                model(images)
        plain_t.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        collect(model, data, top_k=100, progress=False)
        collect_t.append(time.perf_counter() - t0)
    ratios = [c / p for c, p in zip(collect_t, plain_t, strict=True)]
    return {"plain_s": statistics.median(plain_t), "collect_s": statistics.median(collect_t),
            "ratio": statistics.median(ratios)}


def _memory_child(n: int, size: int, batch_size: int) -> None:
    model = _vgg11()

    def batches():
        g = torch.Generator().manual_seed(1)
        for start in range(0, n, batch_size):
            b = min(batch_size, n - start)
            yield torch.rand(b, 3, size, size, generator=g), torch.randint(0, 1000, (b,), generator=g)

    t0 = time.perf_counter()
    stats = collect(model, batches(), top_k=100, progress=False)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"n": stats.count, "m": stats.space.size, "peak_mib": peak_mib,
                      "seconds": time.perf_counter() - t0}))


def memory(n: int, size: int, batch_size: int) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--memory-child", str(n), "--size", str(size),
                          "--batch-size", str(batch_size)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, default=12)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--memory-sizes", default="2000,20000")
    p.add_argument("--memory-image-size", type=int, default=32)
    p.add_argument("--small", action="store_true", help="quick run: fewer batches, smaller N")
    p.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.memory_child is not None:
        _memory_child(a.memory_child, a.size, a.batch_size)
        return
    if a.small:
        a.batches, a.repeats, a.memory_sizes = 3, 1, "200,2000"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    o = overhead(a.batches, a.repeats, a.size, a.batch_size)
    print("\n(a) collection overhead, VGG-11 weights=None, "
          f"{a.size}x{a.size}, batch {a.batch_size}, {a.batches} batches, median of {a.repeats}")
    print(f"{'plain forward s':>16} {'collect s':>10} {'ratio':>7} {'target':>7}")
    print(f"{o['plain_s']:16.3f} {o['collect_s']:10.3f} {o['ratio']:7.3f} {'<=1.15':>7}")
    print(f"\n(c) peak memory of a collection pass (VGG-11, {a.memory_image_size}x{a.memory_image_size}, "
          f"batch {a.batch_size}, K=100), fresh process each")
    print(f"{'N':>8} {'m':>6} {'peak MiB':>9} {'seconds':>8}")
    rows = [memory(int(n), a.memory_image_size, a.batch_size) for n in a.memory_sizes.split(",")]
    for r in rows:
        print(f"{r['n']:8d} {r['m']:6d} {r['peak_mib']:9.0f} {r['seconds']:8.1f}")
    print(f"peak ratio N={rows[-1]['n']} / N={rows[0]['n']}: {rows[-1]['peak_mib'] / rows[0]['peak_mib']:.3f}")


if __name__ == "__main__":
    main()
