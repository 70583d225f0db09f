"""mu-LASSO from sufficient statistics, batched over classes.

For every class j (column b_j of B) solve

    w_j = argmin_w  w^T G w - 2 w^T b_j   s.t.  ||w||_1 <= mu,

which is argmin ||X w - l_j||^2 when G = X^T X and b_j = X^T l_j (the constant l_j^T l_j is dropped),
so nothing of size N is ever needed.

Optimality. With the correlations c = b - G w, w is optimal iff for some lam >= 0:
c_i = lam * sign(w_i) where w_i != 0, |c_i| <= lam elsewhere, and lam * (||w||_1 - mu) = 0.
That is the penalised lasso  min w^T G w - 2 w^T b + 2 lam ||w||_1  at one lam. Answers are
checked against these conditions on all m features.

Solvers.
* "torch" (any device, batched over classes): follows the homotopy (LARS-lasso) path of the
  penalised problem from lam = max|b| downwards, one feature joining or leaving per step, until
  ||w||_1 = mu, or down to lam = 0 when the constraint is inactive. The active block's inverse is
  kept by rank-one updates; the final weights are polished by iterative refinement. On GPUs (and
  for m <= 1024) every class runs on all features, with one product by G per step for all
  classes; otherwise on a working set of features per class (largest |b_i| / sqrt(G_ii) first):
  while some feature breaks the optimality conditions, the set doubles with the features closest to
  breaking them (violators first) and the class is solved again.
* "spams" (CPU): SPAMS' LARS (`spams.lasso`, mode 0, from G and B), the authors' solver. Classes
  whose result fails the check (SPAMS ends its path early on ties, e.g. duplicated features) or
  whose constraint is inactive are solved again by "torch".
* "auto": "spams" on CPU when SPAMS is installed, the features number at most 8192 and its memory
  (about 7 float64 copies of G) fits; else "torch", which reads G in place (a float32 G is never
  copied to float64): at m = 15,104 it took 0.67x SPAMS' time and 1/25 of its memory.
Features that are identical (||x_i - x_j|| = 0 from G alone) or always zero are merged first: they
are interchangeable, and a group's weight goes to its first feature.

Inactive constraint (mu at least the L1 norm of a least-squares solution): the result is the end
point of the homotopy path, a least-squares minimiser of least L1 norm, certified by the last path
direction v (|(G v)_i| <= 1 for all i; for any other minimiser w', (G v)^T w' = ||w||_1 <= ||w'||_1).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from vebi.core.memory import available, budget, format_size
from vebi.errors import VebiError

__all__ = ["SOLVERS", "solve_mu_lasso"]

SOLVERS = ("auto", "torch", "spams")

_FIRST_SET = 128  # initial working-set size per class
_MIN_GROWTH = 64  # features added per round at least
_FEW = 8  # violators at most 1/_FEW of a working set: add _PER_VIOLATOR each instead of doubling
_PER_VIOLATOR = 4
_REFRESH = 64  # steps between recomputations of the correlations from the weights
_DEGENERATE = 1e-10  # a feature this close (relative Schur complement) to the active span stays out
_END = 1e-9  # an event at lam <= _END * lam_start is the end of the path
_IDENTICAL = 1e-12  # features with ||x_i - x_j||^2 <= this * (G_ii + G_jj) count as identical
_IDENTICAL_F32 = 1e-6  # the same for a float32 G
_DIRECTION_TOL = 1e-7  # slack on the least-L1 certificate |G v| <= 1
_COMPACT = 0.25  # drop finished classes from the batch once this fraction is done
_CPU_CHUNK_BYTES = 1 << 30  # working sets solved at once on a CPU, budget permitting (see _chunk_bytes)
_MIN_CHUNK_BYTES = 1 << 26  # the least, counted by working_memory
_BLOCK_BYTES = 1 << 26  # rows of G read at once (cast to float64) for products with sparse weights
_DENSE_CPU_MAX = 1024  # largest m solved in dense mode on a CPU
_SPAMS_MAX_M = 8192  # "auto" takes SPAMS up to this many features: 1.9x faster at m = 4224, slower at 15k
_SPAMS_COPIES = 7  # SPAMS' memory in float64 copies of G (see working_memory)


def solve_mu_lasso(
    gram: Tensor,
    cross: Tensor,
    mu: float,
    *,
    tol: float = 1e-9,
    max_iter: int | None = None,
    device: torch.device | str | None = None,
    solver: str = "auto",
    progress: bool = False,
    memory_budget: str | int | None = None,
) -> Tensor:
    """Solve min_w w^T G w - 2 w^T b_j s.t. ||w||_1 <= mu for every column b_j of `cross`.

    Args:
        gram: G = X^T X, (m, m), symmetric positive semi-definite.
        cross: B = X^T L, (m, C).
        mu: the L1 budget, > 0.
        tol: optimality tolerance: at the answer |c_i| <= lam + tol * max_i |b_ij| for all i.
        max_iter: most homotopy steps per class and working-set round (default 8 * m + 64).
        device: where to compute (default: gram's device); the result comes back on gram's device.
        solver: "auto", "torch" or "spams" (see the module docstring); "spams" needs a CPU device.
        progress: show a progress bar over classes.
        memory_budget: the most memory the solver may take besides G and B (bytes or "8GiB"; default
            $VEBI_MEMORY_BUDGET, else free memory); a fit that needs more is refused in one line.

    Returns:
        W (m, C) float64, column j the solution for class j.
    """
    G, B = _validated(gram, cross, mu, tol)
    if solver not in SOLVERS:
        raise VebiError(f"unknown mu-LASSO solver {solver!r}; choose one of {', '.join(SOLVERS)}.")
    dev = torch.device(device) if device is not None else gram.device
    max_steps = int(max_iter) if max_iter is not None else 8 * G.shape[0] + 64
    if max_steps < 1:
        raise VebiError(f"max_iter must be a positive number of steps, got {max_iter}.")
    if solver == "spams" and dev.type != "cpu":
        raise VebiError(f"the 'spams' mu-LASSO solver runs on the CPU only, not on {dev}.")
    if solver == "spams" and not _has_spams():
        raise VebiError("the 'spams' mu-LASSO solver needs the spams-bin package (pip install).")
    G = G.to(dev)  # kept in its dtype: float32 G stays float32, read in float64 piece by piece
    B = B.to(dev, torch.float64)
    m, C = B.shape

    keep = _distinct_features(G)
    if not keep.numel():
        return torch.zeros(m, C, dtype=torch.float64, device=gram.device)
    use_spams = solver == "spams" or (
        solver == "auto" and dev.type == "cpu" and keep.numel() <= _SPAMS_MAX_M and _has_spams()
        and working_memory(m, C, keep.numel(), "spams") <= available(dev))
    limit = check_working_memory(m, C, keep.numel(), "spams" if use_spams else "torch", dev, memory_budget)
    allowed = torch.zeros(m, dtype=torch.bool, device=dev)
    allowed[keep] = True
    W = torch.zeros(m, C, dtype=torch.float64, device=dev)
    todo = torch.arange(C, device=dev)[B.abs().amax(0) > 0]  # an all-zero b has w = 0
    if use_spams and todo.numel():
        W[keep[:, None], todo] = _spams(G, B[keep][:, todo], keep, mu)
        good = _spams_verified(G, B[:, todo], W[:, todo], mu, tol)
        W[:, todo[~good]] = 0
        todo = todo[~good]
    if todo.numel():
        chunk = _chunk_bytes(m, C, keep.numel(), limit)
        W[:, todo] = _solve_torch(G, B[:, todo], allowed, mu, tol, max_steps, progress, chunk)
    return W.to(gram.device)


def working_memory(m: int, classes: int, distinct: int, solver: str) -> int:
    """Bytes the solver needs besides G and B, for m features (``distinct`` of them solved for).

    SPAMS gets a float64 copy of G on the distinct features and takes about 6 more of its size
    (measured: 11.9 GiB besides a float32 G at m = 15,104, benchmarks/bench_lasso_scale.py); the
    torch solver holds W, the last directions, scores and violations (m x C float64 each), one
    batch of classes' working sets (at least _MIN_CHUNK_BYTES, counted here; more where the budget
    leaves room, see _chunk_bytes) and one block of rows of G.
    """
    per_class = 4 * 8 * m * classes + m * classes
    if solver == "spams":
        return _SPAMS_COPIES * 8 * distinct * distinct + per_class
    chunk = min(_MIN_CHUNK_BYTES, classes * 8 * (2 * distinct * distinct + 16 * distinct))  # see _chunk_rows
    return per_class + chunk + min(_BLOCK_BYTES, 8 * m * m)


def check_working_memory(m: int, classes: int, distinct: int, solver: str, device: torch.device,
                         given: str | int | None = None) -> int:
    """Refuse, in one line, a fit whose working memory exceeds the budget (see vebi.core.memory.budget);
    return the budget in bytes."""
    need = working_memory(m, classes, distinct, solver)
    limit, source = budget(device, given)
    if need > limit:
        raise VebiError(
            f"the mu-LASSO ({solver}) on {m} features and {classes} classes needs about {format_size(need)} "
            f"besides G, more than {format_size(limit)} ({source}); "
            + ("use --solver torch (no copy of G), " if solver == "spams" else "")
            + "restrict the layers (--layer, see `vebi layers`) and collect again, or free memory")
    return limit


def _chunk_bytes(m: int, classes: int, distinct: int, limit: int) -> int:
    """Bytes of working sets the CPU homotopy solves at once: _CPU_CHUNK_BYTES where the budget leaves room,
    down to the _MIN_CHUNK_BYTES that working_memory counts, in a budget of ``limit`` bytes. Larger batches
    of classes spread each step's Python overhead: 64 MiB, 128, 256, 512 MiB, 1 and 2 GiB took 104, 77, 67,
    58, 49 and 52 s on 60 classes at m = 4,224 (benchmarks/bench_lasso.py's problem)."""
    spare = limit - working_memory(m, classes, distinct, "torch")
    return int(min(_CPU_CHUNK_BYTES, _MIN_CHUNK_BYTES + max(spare, 0)))


def _validated(gram: Tensor, cross: Tensor, mu: float, tol: float) -> tuple[Tensor, Tensor]:
    if not isinstance(gram, Tensor) or not isinstance(cross, Tensor):
        raise VebiError("mu-LASSO needs torch tensors for the Gram matrix and the cross products.")
    if gram.ndim != 2 or gram.shape[0] != gram.shape[1]:
        raise VebiError(f"the Gram matrix must be square (m, m), got shape {tuple(gram.shape)}.")
    if cross.ndim != 2 or cross.shape[0] != gram.shape[0]:
        raise VebiError(
            f"the cross products must have shape (m, C) = ({gram.shape[0]}, C) to match the Gram "
            f"matrix, got {tuple(cross.shape)}."
        )
    if gram.shape[0] == 0:
        raise VebiError("the Gram matrix is empty: there are no features.")
    if isinstance(mu, bool) or not isinstance(mu, (int, float)) or not math.isfinite(mu) or mu <= 0:
        raise VebiError(f"mu must be a finite number > 0, got {mu!r}.")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 < tol < 1:
        raise VebiError(f"tol must be a number in (0, 1), got {tol!r}.")
    if gram.is_complex() or cross.is_complex():
        raise VebiError("the Gram matrix and the cross products must be real.")
    # float32 and float64 are read where they are; any other dtype is converted once
    G = gram.detach() if gram.dtype in (torch.float32, torch.float64) else gram.detach().double()
    B = cross.detach().double()
    g_lo, g_hi = torch.aminmax(G)  # NaN and inf propagate to the extremes
    b_lo, b_hi = torch.aminmax(B) if B.numel() else (torch.zeros(()), torch.zeros(()))
    if not math.isfinite(float(g_lo) + float(g_hi)):
        raise VebiError("the Gram matrix contains non-finite values (NaN or inf).")
    if not math.isfinite(float(b_lo) + float(b_hi)):
        raise VebiError("the cross products contain non-finite values (NaN or inf).")
    g_max = max(-float(g_lo), float(g_hi))
    probe = torch.randn(G.shape[0], 2, generator=torch.Generator().manual_seed(0)).to(G)
    # G and G^T products differ by rounding only: summation order over m terms, and in float32 the
    # accumulation of G itself over the images (relative 1e-8 in float64, 1e-4 in float32)
    rel = 1e-8 if G.dtype == torch.float64 else 1e-4
    if float((G @ probe - G.T @ probe).abs().max()) > rel * g_max * G.shape[0]:
        raise VebiError("the Gram matrix is not symmetric; it must be X^T X.")
    if float(G.diagonal().min()) < 0:
        raise VebiError("the Gram matrix has a negative diagonal entry; it must be X^T X.")
    dead = G.diagonal() == 0
    if bool((B[dead.to(B.device)].abs() > 1e-9 * max(-float(b_lo), float(b_hi))).any()):
        raise VebiError(
            "the Gram matrix and the cross products do not come from the same responses: a "
            "feature that is always zero has non-zero cross products."
        )
    return G, B


def _distinct_features(G: Tensor, block: int = 1024) -> Tensor:
    """Indices of the features to solve for: no all-zero feature (G_ii = 0), and of features that
    are identical (||x_i - x_j||^2 = G_ii + G_jj - 2 G_ij = 0) only the first.

    Identical features are interchangeable (any split of their weight with one sign has the same
    objective and L1 norm) and make the path degenerate, so their weight goes to the first.
    """
    m = G.shape[0]
    d = G.diagonal().double()
    # entries of a float32 G carry relative rounding 6e-8 each, so identical features may differ by
    # a few times that in G_ii + G_jj - 2 G_ij
    tol = _IDENTICAL if G.dtype == torch.float64 else _IDENTICAL_F32
    cols = torch.arange(m, device=G.device)
    # identical features have (nearly) equal norms: only features with a near-equal neighbour in
    # sorted norm order can be identical to anything
    order = torch.argsort(d)
    ds = d[order]
    near = ds[1:] - ds[:-1] <= 4 * tol**0.5 * ds[1:]
    cand = torch.zeros(m, dtype=torch.bool, device=G.device)
    cand[order[1:][near]] = True
    cand[order[:-1][near]] = True
    cand = cols[cand & (d > 0)]
    later = torch.zeros(m, dtype=torch.bool, device=G.device)
    for i0 in range(0, cand.numel(), block):
        rows = cand[i0 : i0 + block]
        size = d[rows, None] + d[None, cand]
        same = size - 2 * G[rows[:, None], cand[None, :]].double() <= tol * size
        later[cand] |= (same & (cand[None, :] > rows[:, None])).any(0)
    return cols[(d > 0) & ~later]


# ---------------------------------------------------------------------------------------------
# SPAMS


def _has_spams() -> bool:
    try:
        import spams  # noqa: F401
    except ImportError:
        return False
    return True


def _spams(G: Tensor, B: Tensor, keep: Tensor, mu: float) -> Tensor:
    """SPAMS' LARS on (G[keep, keep], B); B (rows of the kept features) has no all-zero column."""
    import spams

    m, C = B.shape
    s = float(B.abs().max())  # SPAMS stops on steps < 1e-15 in absolute terms: work at scale 1
    Q = G[keep[:, None], keep[None, :]].to(torch.float64).div_(s)  # the one copy of G
    Q = Q.numpy().T  # G is symmetric: its transpose is the column-major array SPAMS wants
    q = np.asfortranarray((B / s).numpy())
    # SPAMS takes the signals X only for ||x_j||^2 (it stops when its running residual drops
    # below 1e-15) and caps the number of steps at X's row count: give m rows and a residual
    # start far above anything the path can remove.
    X = np.zeros((m, C), order="F")
    X[0] = 1e15
    # SPAMS sets the OpenMP thread count, which torch shares: use torch's and put it back after
    threads = torch.get_num_threads()
    try:
        alpha = spams.lasso(X, Q=Q, q=q, lambda1=float(mu), mode=0, L=m, numThreads=threads)
    finally:
        torch.set_num_threads(threads)
    return torch.from_numpy(alpha.toarray()).to(torch.float64)


def _spams_verified(G: Tensor, B: Tensor, W: Tensor, mu: float, tol: float) -> Tensor:
    """(C,) which columns of W satisfy the optimality conditions with ||w||_1 = mu."""
    c = B - _gram_times(G, W)
    slack = tol * B.abs().amax(0)
    act = W != 0
    lam = torch.where(act, c.abs(), 0).amax(0)
    on = torch.where(act, (c.abs() - lam).abs() <= slack, True).all(0)
    off = (c.abs() <= lam + slack).all(0)
    signs = (c * W >= 0).all(0)
    l1 = W.abs().sum(0)
    return torch.isfinite(W).all(0) & on & off & signs & ((l1 - mu).abs() <= 1e-9 * mu)


def _gram_times(G: Tensor, X: Tensor) -> Tensor:
    """G @ X in float64 (m, n) for sparse X: only the columns of G on X's non-zero rows are read,
    a block of rows at a time, so no m x m temporary (nor a float64 copy of a float32 G) is made."""
    m = G.shape[0]
    out = X.new_zeros(m, X.shape[1])
    support = X.ne(0).any(1).nonzero().flatten()
    if not support.numel():
        return out
    Xs = X[support]
    rows = max(1, _BLOCK_BYTES // (8 * support.numel()))
    for i0 in range(0, m, rows):
        out[i0 : i0 + rows] = G[i0 : i0 + rows].index_select(1, support).to(torch.float64) @ Xs
    return out


# ---------------------------------------------------------------------------------------------
# torch: homotopy on working sets, batched over classes


def _solve_torch(
    G: Tensor, B: Tensor, allowed: Tensor, mu: float, tol: float, max_steps: int, progress: bool,
    chunk_bytes: int,
) -> Tensor:
    """The homotopy for every class (columns of B) on the ``allowed`` features; W (m, C)."""
    m, C = B.shape
    dev = G.device
    dense = _dense(dev, m, G.dtype)
    if dense:
        G = G.to(torch.float64)  # a copy only for small m
    W = torch.zeros(m, C, dtype=torch.float64, device=dev)
    V = torch.zeros_like(W)  # last path direction of classes whose path ended at lam = 0
    lam = torch.zeros(C, dtype=torch.float64, device=dev)
    score = B.abs() / G.diagonal().double().clamp_min(torch.finfo(torch.float64).tiny).sqrt()[:, None]
    score[~allowed] = -1
    in_set = torch.full((C, m), dense, dtype=torch.bool, device=dev)
    first = score.topk(min(m, _FIRST_SET), dim=0).indices  # (p0, C)
    in_set[torch.arange(C, device=dev).expand_as(first), first] = True
    todo = torch.arange(C, device=dev)

    with tqdm(total=C, desc="mu-LASSO", unit="class", disable=not progress) as bar:
        while todo.numel():
            sizes = in_set[todo].sum(1)
            order = torch.argsort(sizes)
            todo, sizes = todo[order], sizes[order]
            start = 0
            while start < todo.numel():
                reach = _chunk_rows(dev, int(sizes[start]), dense, chunk_bytes)  # sizes ascend: an upper bound
                n = _chunk_rows(dev, int(sizes[min(start + reach, todo.numel()) - 1]), dense, chunk_bytes)
                cls = todo[start : start + n]
                idx, valid = _working_sets(in_set[cls], int(sizes[start : start + n].max()))
                valid &= allowed[idx]
                bt = B[:, cls].T.contiguous()
                with _one_thread(dev):
                    w, v, lam[cls] = _homotopy(G, bt, idx, valid, mu, max_steps, dense)
                W[:, cls] = w.new_zeros(cls.numel(), m).scatter_add_(1, idx, w * valid).T
                V[:, cls] = v.new_zeros(cls.numel(), m).scatter_add_(1, idx, v * valid).T
                start += cls.numel()
            excess = _violations(G, B[:, todo], W[:, todo], V[:, todo], lam[todo], tol)
            excess = torch.where(in_set[todo] | ~allowed, -math.inf, excess)
            failing = (excess > 0).any(1)
            bar.update(int((~failing).sum()))
            todo, excess = todo[failing], excess[failing]
            if todo.numel():
                # the set grows by the features closest to breaking optimality, violators first: doubling
                # while many break it (adding only the violators made sets creep up a few features per
                # round, each round a solve from scratch: 2x slower), four per violator once few do (a
                # doubling then re-solved 512 features for a dozen violators; 300 classes of m = 4,224:
                # 94 -> 85 s, benchmarks/bench_lasso.py)
                grow = _growth(sizes[failing], (excess > 0).sum(1))
                top = excess.topk(min(int(grow.max()), m), dim=1)
                own = torch.arange(top.values.shape[1], device=dev) < grow[:, None]  # each class's own count
                hit = (top.values > -math.inf) & own  # allowed and not yet in the set
                rows = torch.arange(todo.numel(), device=dev)[:, None].expand_as(hit)
                add = torch.zeros_like(excess, dtype=torch.bool)
                add[rows[hit], top.indices[hit]] = True
                grown = in_set[todo] | add
                grown[grown.sum(1) > m // 2] = allowed  # half of all features: take them all
                in_set[todo] = grown
    return W


def _growth(sizes: Tensor, violators: Tensor) -> Tensor:
    """Features each failing class adds: as many as it has (the set doubles) while many features break
    optimality; max(_MIN_GROWTH, 4 x violators) once they are few (at most 1/8 of the set)."""
    few = violators * _FEW <= sizes
    return torch.where(few, (_PER_VIOLATOR * violators).clamp_min(_MIN_GROWTH), sizes.clamp_min(_MIN_GROWTH))


def _violations(G: Tensor, B: Tensor, W: Tensor, V: Tensor, lam: Tensor, tol: float) -> Tensor:
    """(n, m) how far each feature breaks optimality (> 0: it does), relative to max|b_j|.

    Every class needs |c_i| <= lam; a class whose path ended at lam = 0 also needs the least-L1
    certificate |(G v)_i| <= 1 for its last direction v.
    """
    scale = B.abs().amax(0)
    excess = ((B - _gram_times(G, W)).abs() - lam - tol * scale).T / scale[:, None]
    free = lam <= 0
    if bool(free.any()):
        dual = _gram_times(G, V[:, free]).abs().T - 1 - max(tol, _DIRECTION_TOL)
        excess[free] = torch.maximum(excess[free], dual)
    return excess


@contextmanager
def _one_thread(dev: torch.device) -> Iterator[None]:
    """The homotopy on a CPU runs one intra-op thread: its steps are many small operations (about
    n x p elements), where waking a thread pool costs more than it saves (on two cores, 4x faster
    measured by benchmarks/bench_lasso.py); the large products outside it use every thread."""
    if dev.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _dense(dev: torch.device, m: int, dtype: torch.dtype = torch.float64) -> bool:
    """Dense mode (every class on all features, one matrix product with G per step) where that
    product is cheap: on GPUs holding a float64 G, and for small m; else working sets."""
    return (dev.type == "cuda" and dtype == torch.float64) or m <= _DENSE_CPU_MAX


def _chunk_rows(dev: torch.device, p: int, dense: bool, cpu_bytes: int) -> int:
    """How many classes with working sets of p features to solve at once (on a CPU in ``cpu_bytes``)."""
    per_class = 8 * ((1 if dense else 2) * p * p + 16 * p)
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        budget = free // 4
    else:
        budget = cpu_bytes
    return max(1, budget // per_class)


def _working_sets(mask: Tensor, p: int) -> tuple[Tensor, Tensor]:
    """(n, m) membership -> (n, p) feature indices (members first) and their validity."""
    idx = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :p]
    return idx, torch.gather(mask, 1, idx)


@dataclass
class _Path:
    """n homotopies, one per class, on working sets of p features, actives held in K slots.

    `H` is the inverse of the active block of G in slot coordinates (rows and columns of free slots
    are zero). `GA[:, t]` is the row of G of slot t's feature on the working set; without GA
    (dense mode: every class works on all features, p = m) products with G are matrix products.
    """

    rows: Tensor  # (n,) row of each class in the caller's batch
    idx: Tensor  # (n, p) feature indices
    valid: Tensor  # (n, p)
    b: Tensor  # (n, p)
    gdiag: Tensor  # (n, p)
    c: Tensor  # (n, p) correlations b - G w on the working set
    lam: Tensor  # (n,)
    lam0: Tensor  # (n,) lam at the start of the path
    l1: Tensor  # (n,)
    GA: Tensor | None  # (n, K, p): rows, so a product reads each slot's row contiguously
    H: Tensor  # (n, K, K)
    w: Tensor  # (n, K)
    d: Tensor  # (n, K) the path direction H s: dw per unit decrease of lam
    sign: Tensor  # (n, K), 0 in free slots
    pos: Tensor  # (n, K) working-set position of each slot's feature
    alive: Tensor  # (n, K)
    active: Tensor  # (n, p)
    blocked: Tensor  # (n, p) degenerate features kept out until the next drop
    no_join: Tensor  # (n,) position just dropped (-1: none); it may not rejoin in the next step
    done: Tensor  # (n,)
    constrained: Tensor  # (n,) ended on ||w||_1 = mu (else at lam = 0)
    used: int = 0  # slots in use by some class

    def take(self, sel: Tensor) -> _Path:
        parts = {f.name: getattr(self, f.name) for f in fields(self)}
        return _Path(**{k: v[sel] if isinstance(v, Tensor) else v for k, v in parts.items()})

    def grow(self) -> None:
        n, K = self.w.shape
        p = self.b.shape[1]
        k2 = min(2 * K, p)
        if self.GA is not None:
            self.GA = torch.cat([self.GA, self.GA.new_zeros(n, k2 - K, p)], 1)
        H = self.H.new_zeros(n, k2, k2)
        H[:, :K, :K] = self.H
        self.H = H
        for name in ("w", "d", "sign", "pos", "alive"):
            t = getattr(self, name)
            setattr(self, name, torch.cat([t, t.new_zeros(n, k2 - K)], 1))


def _vm(x: Tensor, M: Tensor) -> Tensor:
    """Batched x^T M, (n, S) by (n, S, q) -> (n, q); M x for the symmetric H and G_AA. This form reads M
    row by row: 3x faster than M @ x on a strided slice M[:, :S, :S] (memory-bound gemv)."""
    return (x.unsqueeze(1) @ M).squeeze(1)


def _times_gram(G: Tensor, st: _Path, x: Tensor) -> Tensor:
    """(n, p): G restricted to each working set times slot vectors x (n, S)."""
    S = x.shape[1]
    if st.GA is not None:
        return _vm(x, st.GA[:, :S])
    full = x.new_zeros(st.b.shape).scatter_add_(1, st.pos[:, :S], x * st.alive[:, :S])
    return full @ G  # one matrix product for all classes (G is symmetric)


def _homotopy(
    G: Tensor, bt: Tensor, idx: Tensor, valid: Tensor, mu: float, max_steps: int, dense: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """Follow the LARS-lasso path for n classes on their working sets.

    bt: (n, m) cross products of these classes; idx, valid: (n, p) working sets (dense: all m
    features in order, for every class).
    Returns w (n, p), the last direction v (n, p) (zero where the path ended on ||w||_1 = mu),
    and lam (n,).
    """
    n, p = idx.shape
    dev, dt = G.device, torch.float64
    b = torch.gather(bt, 1, idx) * valid
    K = min(p, 64)
    lam = b.abs().amax(1)
    st = _Path(
        rows=torch.arange(n, device=dev),
        idx=idx,
        valid=valid,
        b=b,
        gdiag=G.diagonal()[idx].double() * valid,
        c=b.clone(),
        lam=lam,
        lam0=lam.clone(),
        l1=torch.zeros(n, dtype=dt, device=dev),
        GA=None if dense else torch.zeros(n, K, p, dtype=dt, device=dev),
        H=torch.zeros(n, K, K, dtype=dt, device=dev),
        w=torch.zeros(n, K, dtype=dt, device=dev),
        d=torch.zeros(n, K, dtype=dt, device=dev),
        sign=torch.zeros(n, K, dtype=dt, device=dev),
        pos=torch.zeros(n, K, dtype=torch.long, device=dev),
        alive=torch.zeros(n, K, dtype=torch.bool, device=dev),
        active=torch.zeros(n, p, dtype=torch.bool, device=dev),
        blocked=torch.zeros(n, p, dtype=torch.bool, device=dev),
        no_join=torch.full((n,), -1, dtype=torch.long, device=dev),
        done=lam <= 0,
        constrained=torch.zeros(n, dtype=torch.bool, device=dev),
    )
    out_w = torch.zeros(n, p, dtype=dt, device=dev)
    out_v = torch.zeros(n, p, dtype=dt, device=dev)
    out_lam = torch.zeros(n, dtype=dt, device=dev)
    steps = 0
    while st.rows.numel():
        done = st.done
        n_done = int(done.sum())
        if n_done and (n_done == done.numel() or n_done >= _COMPACT * done.numel()):
            fin = st.take(done)
            w, v = _polish(G, fin, mu)
            out_w[fin.rows], out_v[fin.rows], out_lam[fin.rows] = w, v, fin.lam.clamp_min(0)
            st = st.take(~done)
            continue
        if steps >= max_steps:
            raise VebiError(
                f"mu-LASSO did not converge within max_iter={max_steps} homotopy steps; choose a smaller mu "
                "(or, from Python, raise max_iter)"
            )
        _step(G, st, mu)
        steps += 1
        if steps % _REFRESH == 0:
            S = st.used
            st.d[:, :S] = _vm(st.sign[:, :S], st.H[:, :S, :S])
            st.c = st.b - _times_gram(G, st, st.w[:, :S])
            st.l1 = st.w[:, :S].abs().sum(1)
    return out_w, out_v, out_lam


def _step(G: Tensor, st: _Path, mu: float) -> None:
    """Advance every unfinished path to its next event: a join, a drop, or the end."""
    n, p = st.b.shape
    ar = torch.arange(n, device=st.b.device)
    S = st.used
    HS = st.H[:, :S, :S]
    sg = st.sign[:, :S]
    d = st.d[:, :S]  # dw_A per unit decrease of lam
    a = _times_gram(G, st, d)  # dc = -a per unit decrease of lam
    sd = (sg * d).sum(1)

    cand = st.valid & ~st.active & ~st.blocked
    cand[ar, st.no_join.clamp_min(0)] &= st.no_join < 0
    lam = st.lam[:, None]
    up, dn = 1 - a, 1 + a
    g_join = torch.minimum(
        torch.where(up > 1e-12, (lam - st.c) / up, math.inf),
        torch.where(dn > 1e-12, (lam + st.c) / dn, math.inf),
    )
    gj, jpos = torch.where(cand, g_join.clamp_min(0), math.inf).min(1)
    if S:
        ratio = -st.w[:, :S] / d
        gd, dslot = torch.where(st.alive[:, :S] & (ratio > 0), ratio, math.inf).min(1)
    else:
        gd, dslot = torch.full_like(gj, math.inf), torch.zeros_like(jpos)
    gl = torch.where(sd > 0, ((mu - st.l1) / sd).clamp_min(0), math.inf)
    # ties: reaching ||w||_1 = mu wins over lam = 0, over a drop, over a join
    gamma, event = torch.stack([gl, st.lam, gd, gj], 1).min(1)
    end = (event > 1) & (st.lam - gamma <= _END * st.lam0)
    event = torch.where(end, 1, event)
    gamma = torch.where(end, st.lam, gamma)
    live = ~st.done
    event = torch.where(live, event, -1)
    gamma = torch.where(live, gamma, 0)

    st.w[:, :S] += gamma[:, None] * d
    st.c -= gamma[:, None] * a
    st.lam -= gamma
    st.l1 += gamma * sd
    st.no_join.fill_(-1)
    st.constrained |= event == 0
    st.lam[event == 1] = 0
    st.done |= (event == 0) | (event == 1)
    drop, join = event == 2, event == 3
    if not bool((drop | join).any()):
        return

    # one rank-one update of H per class: H +- z z^T / sigma
    if st.GA is not None:  # G between the joining feature and the active slots
        g = st.GA[ar, :S, jpos]
    else:
        g = G[jpos[:, None], st.pos[:, :S]]
    u = _vm(g, HS)
    gii = st.gdiag[ar, jpos]
    sigma = gii - (g * u).sum(1)  # squared distance of the joining column to the active span
    ok = join & (sigma > _DEGENERATE * gii)
    bad = join & ~ok
    st.blocked[ar[bad], jpos[bad]] = True
    if S:
        h = HS[ar, :, dslot]  # column of the dropped slot
        hk = h[ar, dslot]
    else:
        h, hk = HS.new_zeros(n, 0), torch.ones_like(gii)
    S2 = S
    t = torch.zeros_like(jpos)
    if bool(ok.any()):
        while not bool((~st.alive[ok]).any(1).all()):
            st.grow()
        t = (~st.alive).to(torch.int8).argmax(1)  # first free slot
        S2 = max(S, int(t[ok].max()) + 1)
    z = torch.zeros(n, S2, dtype=st.b.dtype, device=st.b.device)
    z[:, :S] = torch.where(ok[:, None], u, torch.where(drop[:, None], h, 0))
    z[ar[ok], t[ok]] = -1
    coef = torch.where(ok, 1 / sigma, torch.where(drop, -1 / hk, 0))
    st.H[:, :S2, :S2].addcmul_((z * coef[:, None]).unsqueeze(2), z.unsqueeze(1))
    # the direction H s follows without a pass over H: a joining slot's column of H was zero,
    # a dropped slot's sign leaves with it (z^T s with the new sign for joins, the old for drops)
    zs = (z * st.sign[:, :S2]).sum(1) - torch.where(ok, torch.sign(st.c[ar, jpos]), 0)
    st.d[:, :S2] += (coef * zs)[:, None] * z

    r, k = ar[drop], dslot[drop]
    if r.numel():
        st.H[r, k, :] = 0
        st.H[r, :, k] = 0
        st.d[r, k] = 0
        st.w[r, k] = 0
        st.sign[r, k] = 0
        st.alive[r, k] = False
        st.active[r, st.pos[r, k]] = False
        st.no_join[r] = st.pos[r, k]
        st.blocked[r] = False
    r, i, k = ar[ok], jpos[ok], t[ok]
    if r.numel():
        if st.GA is not None:
            # the joining feature's row of G (= its column): contiguous reads
            st.GA[r, k] = G[st.idx[r, i][:, None], st.idx[r]].double() * st.valid[r]
        st.w[r, k] = 0
        st.sign[r, k] = torch.sign(st.c[r, i])
        st.pos[r, k] = i
        st.alive[r, k] = True
        st.active[r, i] = True
        st.used = S2


def _polish(G: Tensor, st: _Path, mu: float, sweeps: int = 3) -> tuple[Tensor, Tensor]:
    """Refine the finished paths' active-set systems; return w and the last direction v (n, p).

    Constrained: G_AA w + lam s = b_A, s^T w = mu.  Unconstrained (lam = 0): G_AA w = b_A.
    Direction: G_AA v = s.  (Iterative refinement with the kept inverse H.)
    """
    n, p = st.b.shape
    S = st.used
    out_w = torch.zeros(n, p, dtype=st.b.dtype, device=st.b.device)
    out_v = torch.zeros_like(out_w)
    if not S:
        return out_w, out_v
    alive = st.alive[:, :S].to(st.b.dtype)
    pos = st.pos[:, :S]
    if st.GA is not None:
        GAA = torch.gather(st.GA[:, :S], 2, pos[:, None, :].expand(-1, S, -1))
    else:
        GAA = G[pos[:, :, None], pos[:, None, :]]
    GAA = GAA * alive[:, :, None] * alive[:, None, :]
    bA = torch.gather(st.b, 1, pos) * alive
    s = st.sign[:, :S]
    H = st.H[:, :S, :S]
    w = st.w[:, :S] * alive
    lam = torch.where(st.constrained, st.lam, 0)
    con = st.constrained.to(w.dtype)
    v = _vm(s, H)
    for _ in range(sweeps):
        v = v + _vm(s - _vm(v, GAA), H)
    sv = (s * v).sum(1)
    sv = torch.where(sv > 0, sv, 1)
    for _ in range(sweeps):
        r1 = (bA - lam[:, None] * s - _vm(w, GAA)) * alive
        r2 = mu - (s * w).sum(1)
        Hr = _vm(r1, H)
        dl = con * ((s * Hr).sum(1) - r2) / sv
        w = w + Hr - dl[:, None] * v
        lam = lam + dl
    st.lam = lam
    out_w.scatter_add_(1, pos, w * alive)
    out_v.scatter_add_(1, pos, v * alive * (1 - con)[:, None])
    return out_w, out_v
