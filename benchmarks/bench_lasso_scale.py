"""mu-LASSO at the feature counts of modern CNNs: peak memory and time against SPAMS on the same G.

ResNet-50's default layers give m = 15,104 features, DenseNet-121's 40,800. A G = X^T X of that
size from real images takes hours to collect on a CPU, so the problem is planted: X stacks N rows
Z F of a rank-r factor model (Z: N x r Gaussian, F: r x m loadings, non-negative and sparse like
rectified responses) over m rows diag(sqrt(d)) of independent feature noise, so that

    G = F^T (Z^T Z) F + diag(d),    B = F^T Z^T L,

with labels L from a planted rule (class j scores the sum of 3 features' factor parts plus noise).
G and B come from one X, as collected statistics do; G costs m^2 r, not m^2 N.

Each solver runs in a fresh process that builds the same G (seeded) and reports the peak resident
memory of the solve (VmHWM after resetting it; the build's memory is not counted): "extra" is
what the solve adds to the resident G and B, "peak/G" the whole peak (G + extra) in units of G, next to the time and the objective's largest relative difference to SPAMS'.

    .venv/bin/python benchmarks/bench_lasso_scale.py                  # m = 15,104 and 40,800, float32 G
    .venv/bin/python benchmarks/bench_lasso_scale.py --m 4224 --dtype float64 --classes 200
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch


def planted(m: int, classes: int, dtype: torch.dtype, seed: int = 0, rank: int = 256, images: int = 20000):
    g = torch.Generator().manual_seed(seed)
    F = torch.relu(torch.randn(rank, m, generator=g) - 1.0)  # sparse non-negative loadings
    Z = torch.randn(images, rank, generator=g)
    rule = torch.stack([torch.randperm(m, generator=g)[:3] for _ in range(classes)])
    score = (Z @ F[:, rule.flatten()]).view(images, classes, 3).sum(2)
    score = (score - score.mean(0)) / score.std(0) + 0.5 * torch.randn(images, classes, generator=g)
    L = torch.nn.functional.one_hot(score.argmax(1), classes).to(torch.float64)
    R = torch.linalg.cholesky(Z.double().T @ Z.double())  # Z^T Z = R R^T
    Y = (R.T @ F.double()).to(dtype)  # G = Y^T Y + diag(d)
    del F
    G = Y.T @ Y
    d = 0.1 * G.diagonal().mean() * (0.5 + torch.rand(m, generator=g).to(dtype))
    G.diagonal().add_(d)
    B = (Y.T.double() @ torch.linalg.solve_triangular(R, Z.double().T @ L, upper=False))
    a2 = images / float(G.diagonal().double().sum())  # rows of X of unit norm on average, as collected
    return G.mul_(a2), B.mul_(a2**0.5)


def rss_peak() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))


def child(args: argparse.Namespace) -> None:
    from vebi.core.lasso import _gram_times, solve_mu_lasso

    dtype = getattr(torch, args.dtype)
    G, B = planted(args.m, args.classes, dtype, args.seed)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current resident size
    with open("/proc/self/status") as f:
        base = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS"))
    t = time.perf_counter()
    W = solve_mu_lasso(G, B, args.mu, solver=args.solver, memory_budget=args.budget)
    seconds = time.perf_counter() - t
    peak = rss_peak() - base
    f = (W * _gram_times(G, W)).sum(0) - 2 * (W * B).sum(0)
    torch.save({"W": W.to_sparse(), "f": f}, args.out)
    print(json.dumps({"seconds": seconds, "extra": peak, "gram": G.numel() * G.element_size(),
                      "nnz": float((W != 0).sum(0).double().mean())}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--m", type=int, nargs="+", default=[15104, 40800])
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--mu", type=float, default=10.0)
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    ap.add_argument("--solvers", nargs="+", default=["spams", "torch"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budget", default=None, help="memory budget handed to the solver")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--solver", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        args.m = args.m[0]
        child(args)
        return
    print(f"C={args.classes} classes, mu={args.mu:g}, G in {args.dtype}, CPU threads {torch.get_num_threads()}")
    head = (f"{'m':>7} {'solver':<7} {'G GiB':>6} {'time s':>8} {'/SPAMS':>7} {'extra GiB':>9} "
            f"{'peak/G':>7} {'obj rel diff':>13} {'nnz':>6}")
    print(head)
    print("-" * len(head))
    for m in args.m:
        ref = None
        for solver in args.solvers:
            out = f"/tmp/bench_lasso_scale_{m}_{solver}.pt"
            cmd = [sys.executable, __file__, "--child", "--m", str(m), "--classes", str(args.classes), "--mu",
                   str(args.mu), "--dtype", args.dtype, "--solver", solver, "--seed", str(args.seed), "--out", out]
            if args.budget:
                cmd += ["--budget", args.budget]
            run = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if run.returncode:
                last = (run.stderr.strip().splitlines() or ["killed"])[-1]
                print(f"{m:>7} {solver:<7} {'':>6} failed: {last[:150]}")
                continue
            r = json.loads(run.stdout.strip().splitlines()[-1])
            f = torch.load(out)["f"]
            if solver == "spams":
                ref = (r, f)
            if ref is None:  # SPAMS refused or failed: nothing to compare with
                ratio, rel = "-", "-"
            else:
                ratio = f"{r['seconds'] / ref[0]['seconds']:.2f}"
                rel = f"{float(((f - ref[1]) / ref[1].abs().clamp_min(1e-300)).abs().max()):.1e}"
            gib = 2**30
            print(f"{m:>7} {solver:<7} {r['gram'] / gib:>6.2f} {r['seconds']:>8.1f} {ratio:>7} "
                  f"{r['extra'] / gib:>9.2f} {(r['gram'] + r['extra']) / r['gram']:>7.2f} {rel:>13} {r['nnz']:>6.1f}")


if __name__ == "__main__":
    main()
