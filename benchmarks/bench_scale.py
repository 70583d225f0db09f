"""ILSVRC-12 scale without the images: response vectors streamed through the statistics.

Rows x (m = 4224, VGG-16's conv filters, non-negative, unit length) with labels of C = 1000
classes and (y, x) positions are generated per batch from a seed and fed to
``FeatureStats.update`` (G, B, counts, sums and the top-K lists, K = 100). Only the update calls
(and, with several processes, the final all-reduce / top-K merge) are timed; generating the rows
is not. Each configuration runs in fresh processes, so peak memory (ru_maxrss, the largest of the
processes) is its own; "(imports)" is the resident memory after importing torch, before any work.
Printed: rows/s of the statistics, peak memory (target < 2 GiB, flat in
N: two N for one process), and the statistics time of one ILSVRC-12 pass (1,281,167 images)
extrapolated from the measured rate (the rate grows with N as fewer features' top-K change, so
extrapolating from a smaller N overestimates).

    python benchmarks/bench_scale.py --rows 1281167          # full size
    python benchmarks/bench_scale.py --rows 20000 --procs 1   # quick
    python benchmarks/bench_scale.py --device cuda --procs 1  # statistics on a GPU, syncs are errors
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vebi.core.distributed import reduce_stats
from vebi.core.features import FeatureSpace
from vebi.core.stats import FeatureStats, StatsConfig

ILSVRC12_TRAIN = 1_281_167


def _batch(j: int, a: argparse.Namespace, device: torch.device) -> tuple[torch.Tensor, ...]:
    g = torch.Generator(device=device).manual_seed(a.seed * 1_000_003 + j)
    b = min(a.batch_size, a.rows - j * a.batch_size)
    x = torch.rand(b, a.features, generator=g, device=device).pow_(4)
    x /= x.norm(dim=1, keepdim=True)
    labels = torch.randint(0, a.classes, (b,), generator=g, device=device)
    yx = torch.randint(0, 14, (b, a.features, 2), generator=g, device=device)
    return x, labels, torch.arange(j * a.batch_size, j * a.batch_size + b, device=device), yx


def _rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _run(rank: int, world: int, a: argparse.Namespace, init: str, out_dir: str) -> None:
    base = _rss()  # after importing torch and vebi
    torch.set_num_threads(max(1, a.threads // world))
    device = torch.device(a.device)
    if world > 1:
        dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    stats = FeatureStats(StatsConfig(FeatureSpace(("features",), (a.features,)),
                                     tuple(str(c) for c in range(a.classes)), top_k=a.top_k), device)
    timed = 0.0
    for j in range(rank, -(-a.rows // a.batch_size), world):
        x, labels, ids, yx = _batch(j, a, device)
        _sync(device)
        t0 = time.perf_counter()
        if device.type == "cuda":
            torch.cuda.set_sync_debug_mode("error")  # a read-back inside update() fails the benchmark
        stats.update(x, labels, ids, yx, labels)
        if device.type == "cuda":
            torch.cuda.set_sync_debug_mode(0)
        _sync(device)
        timed += time.perf_counter() - t0
    t0 = time.perf_counter()
    stats = reduce_stats(stats)
    reduce_s = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else _rss()
    Path(out_dir, f"{rank}.json").write_text(json.dumps({
        "rows": stats.count, "update_s": timed, "reduce_s": reduce_s, "peak": peak, "base": base,
        "gram_trace": float(stats.gram.trace()), "top1": stats.top_indices[:4, 0].tolist()}))
    if world > 1:
        dist.destroy_process_group()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _child(a: argparse.Namespace) -> None:
    """One configuration: ``a.world`` processes (gloo over a file), results as JSON on stdout."""
    with tempfile.TemporaryDirectory() as tmp:
        init = f"file://{tmp}/rendezvous"
        if a.world == 1:
            _run(0, 1, a, init, tmp)
        else:
            mp.spawn(_run, args=(a.world, a, init, tmp), nprocs=a.world)
        ranks = [json.loads(Path(tmp, f"{r}.json").read_text()) for r in range(a.world)]
    slowest = {k: max(r[k] for r in ranks) for k in ("update_s", "reduce_s", "peak", "base")}
    print(json.dumps({**ranks[0], **slowest}))


def _measure(a: argparse.Namespace, rows: int, world: int) -> dict:
    args = [sys.executable, __file__, "--child", "--world", str(world), "--rows", str(rows)]
    for name in ("features", "classes", "top_k", "batch_size", "threads", "seed", "device"):
        args += [f"--{name.replace('_', '-')}", str(getattr(a, name))]
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=ILSVRC12_TRAIN, help="N, response vectors streamed")
    p.add_argument("--memory-rows", type=int, default=None, help="a smaller N for the flat-memory check "
                   "(default rows / 4)")
    p.add_argument("--procs", default="1,2", help="process counts to run (gloo), e.g. 1,2")
    p.add_argument("--features", type=int, default=4224)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--top-k", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads, shared by the processes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda (one process per GPU is not simulated)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--world", type=int, default=1, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        _child(a)
        return
    print(f"torch {torch.__version__}, {a.threads} threads, device {a.device}; m={a.features}, C={a.classes}, "
          f"K={a.top_k}, batch {a.batch_size}")
    runs = []
    small = a.memory_rows or max(a.rows // 4, a.batch_size)
    if "1" in a.procs.split(","):
        runs.append((1, small))
    runs += [(int(w), a.rows) for w in a.procs.split(",")]
    print(f"{'procs':>5} {'N':>9} {'stats s':>9} {'reduce s':>9} {'rows/s':>9} {'peak MiB':>9} {'(imports)':>9} "
          f"{'ILSVRC-12 min':>14}")
    results = {}
    for world, rows in runs:
        r = _measure(a, rows, world)
        assert r["rows"] == rows, r
        rate = rows / (r["update_s"] + r["reduce_s"])
        results[(world, rows)] = r
        print(f"{world:5d} {rows:9d} {r['update_s']:9.1f} {r['reduce_s']:9.2f} {rate:9.0f} {r['peak'] / 2**20:9.0f} "
              f"{r['base'] / 2**20:9.0f} {ILSVRC12_TRAIN / rate / 60:14.1f}", flush=True)
    if (1, small) in results and (1, a.rows) in results and small != a.rows:
        print(f"peak memory N={a.rows} / N={small}: "
              f"{results[(1, a.rows)]['peak'] / results[(1, small)]['peak']:.3f} (flat: ~1)")
    full = [r for (w, n), r in results.items() if n == a.rows]
    if len(full) > 1:
        same = all(r["top1"] == full[0]["top1"] for r in full)
        rel = max(abs(r["gram_trace"] - full[0]["gram_trace"]) / full[0]["gram_trace"] for r in full)
        print(f"processes agree: top-1 images {'same' if same else 'DIFFER'}, trace(G) rel. diff {rel:.1e}")


if __name__ == "__main__":
    main()
