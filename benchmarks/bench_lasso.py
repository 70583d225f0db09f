"""mu-LASSO benchmark: vebi's solver(s) against SPAMS on one problem, side by side.

The problem imitates a VGG-16 collection: m = 4224 features (its 13 conv layers), C = 1000 classes,
N = 20,000 synthetic response vectors streamed into G = X^T X and B = X^T L in float64. Responses are
energies (squared rectified linear mixtures of 64 shared latent factors, so they are non-negative,
sparse-ish and correlated), L1-normalised within each layer, then L2-normalised as a whole (as
METHOD.md describes). Labels follow a planted linear rule: class j scores the sum of 3 features
picked for it, standardised per class, plus Gaussian noise; the label is the best-scoring class.

Columns: time in seconds, time / SPAMS time, the largest relative objective difference over classes
against SPAMS, (f - f_spams) / |f_spams| with f(w) = w^T G w - 2 w^T b (negative: lower than SPAMS),
mean and largest number of non-zero weights, and the largest ||w||_1 / mu.

    .venv/bin/python benchmarks/bench_lasso.py            # the full problem (minutes)
    .venv/bin/python benchmarks/bench_lasso.py --small    # m = 512, C = 100, N = 2000 (seconds)
    .venv/bin/python benchmarks/bench_lasso.py --solvers torch-cuda   # on a GPU machine
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from vebi.core.lasso import _spams_verified, solve_mu_lasso

VGG16 = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)
SMALL = (64, 64, 128, 256)


def synthetic_statistics(
    channels: tuple[int, ...], classes: int, images: int, seed: int, batch: int = 2000
) -> tuple[torch.Tensor, torch.Tensor]:
    """G = X^T X (m, m) and B = X^T L (m, C) in float64, accumulated batch by batch."""
    g = torch.Generator().manual_seed(seed)
    m, latent = sum(channels), 64
    mix = torch.randn(latent, m, generator=g) / latent**0.5
    bias = -0.5 * torch.rand(m, generator=g)
    rule = torch.stack([torch.randperm(m, generator=g)[:3] for _ in range(classes)])  # (C, 3)

    def responses(n: int) -> torch.Tensor:
        z = torch.randn(n, latent, generator=g)
        energy = torch.relu(z @ mix + bias + 0.3 * torch.randn(n, m, generator=g)) ** 2
        parts = [p / p.sum(1, keepdim=True).clamp_min(1e-12) for p in energy.split(channels, 1)]
        x = torch.cat(parts, 1)
        return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)

    pilot = responses(batch)[:, rule].sum(2)  # class scores of a pilot batch, for standardising
    mean, std = pilot.mean(0), pilot.std(0).clamp_min(1e-12)
    G = torch.zeros(m, m, dtype=torch.float64)
    B = torch.zeros(m, classes, dtype=torch.float64)
    done = 0
    while done < images:
        n = min(batch, images - done)
        x = responses(n)
        score = (x[:, rule].sum(2) - mean) / std + 0.5 * torch.randn(n, classes, generator=g)
        labels = torch.nn.functional.one_hot(score.argmax(1), classes).double()
        xd = x.double()
        G += xd.T @ xd
        B += xd.T @ labels
        done += n
    return G, B


def spams_lasso(G: torch.Tensor, B: torch.Tensor, mu: float) -> torch.Tensor:
    """SPAMS `lasso` (mode 0 = L1 ball) called on (G, B) directly, as a user would.

    X only supplies ||x_j||^2 (SPAMS stops once its running residual is below 1e-15) and caps the
    number of steps at its row count, so it gets m rows and a large norm.
    """
    import spams

    m, C = B.shape
    X = np.zeros((m, C), order="F")
    X[0] = 1e15
    threads = torch.get_num_threads()
    try:
        W = spams.lasso(
            X,
            Q=np.asfortranarray(G.numpy()),
            q=np.asfortranarray(B.numpy()),
            lambda1=mu,
            mode=0,
            L=m,
            numThreads=threads,
        )
    finally:
        torch.set_num_threads(threads)  # SPAMS changes the OpenMP thread count torch shares
    return torch.from_numpy(W.toarray())


def objective(G: torch.Tensor, B: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    W = W.to(G.device, torch.float64)
    return (W * (G @ W)).sum(0) - 2 * (W * B).sum(0)


def timed(fn, device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--small", action="store_true", help="m = 512, C = 100, N = 2000")
    ap.add_argument("--mu", type=float, nargs="+", default=[10.0])
    ap.add_argument("--classes", type=int, default=None)
    ap.add_argument("--images", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch (and SPAMS) CPU threads")
    ap.add_argument(
        "--solvers",
        nargs="+",
        choices=("auto", "torch-cpu", "torch-cuda"),
        default=["auto", "torch-cuda"],
        help="vebi rows besides SPAMS (torch-cuda only where CUDA is available)",
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    channels = SMALL if args.small else VGG16
    classes = args.classes or (100 if args.small else 1000)
    images = args.images or (2000 if args.small else 20000)

    cpu = torch.device("cpu")
    (G, B), t_stats = timed(lambda: synthetic_statistics(channels, classes, images, args.seed), cpu)
    m = G.shape[0]
    print(
        f"problem: m={m} features, C={classes} classes, N={images} images "
        f"(statistics built in {t_stats:.1f} s); CPU threads: {torch.get_num_threads()}"
    )
    cuda = torch.cuda.is_available()
    if cuda:
        print(f"GPU: {torch.cuda.get_device_name(0)}")

    header = (
        f"{'mu':>6} {'solver':<22} {'time s':>8} {'/SPAMS':>7} {'obj rel diff':>13} "
        f"{'nnz mean':>9} {'nnz max':>8} {'|w|1/mu':>8}"
    )
    print(header)
    print("-" * len(header))
    spams_lasso(G[:8, :8], B[:8, :2], 1.0)  # warm-up: SPAMS starts its threads on first use
    solve_mu_lasso(G[:8, :8], B[:8, :2], 1.0)
    checks = []
    for mu in args.mu:
        rows = []
        W_ref, t_ref = timed(lambda: spams_lasso(G, B, mu), cpu)
        f_ref = objective(G, B, W_ref)
        rows.append(("SPAMS lasso(mode=0)", W_ref, t_ref))
        for solver in args.solvers:
            if solver == "auto":
                rows.append(("vebi auto (cpu)", *timed(lambda: solve_mu_lasso(G, B, mu), cpu)))
            elif solver == "torch-cpu":
                out = timed(lambda: solve_mu_lasso(G, B, mu, solver="torch"), cpu)
                rows.append(("vebi torch (cpu)", *out))
            elif solver == "torch-cuda" and cuda:
                dev = torch.device("cuda")
                Gd, Bd = G.to(dev), B.to(dev)
                solve_mu_lasso(Gd[:64, :64], Bd[:64, :4], mu, solver="torch")  # warm-up
                out = timed(lambda: solve_mu_lasso(Gd, Bd, mu, solver="torch"), dev)
                rows.append(("vebi torch (cuda)", *out))
        for name, W, t in rows:
            W = W.cpu()
            rel = (objective(G, B, W) - f_ref) / f_ref.abs().clamp_min(1e-300)
            nnz = (W != 0).sum(0).double()
            print(
                f"{mu:>6g} {name:<22} {t:>8.2f} {t / t_ref:>7.2f} "
                f"{float(rel[rel.abs().argmax()]):>13.2e} {float(nnz.mean()):>9.1f} "
                f"{int(nnz.max()):>8d} {float(W.abs().sum(0).max() / mu):>8.4f}"
            )
        seen = B.abs().amax(0) > 0  # a class without images has w = 0 and nothing to check
        good = int(_spams_verified(G, B[:, seen], W_ref[:, seen], mu, 1e-9).sum())
        checks.append(
            f"mu={mu:g}: {good}/{int(seen.sum())} SPAMS columns of classes with images pass "
            f"vebi's optimality check ({classes - int(seen.sum())} classes without images)"
        )
    print("\n".join(checks))


if __name__ == "__main__":
    main()
