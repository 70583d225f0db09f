"""mu-LASSO: agreement with SPAMS and cvxpy, degenerate cases, planted rule, bad input."""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest
import spams
import torch

import vebi.core.lasso as lasso
from vebi.errors import VebiError
from vebi.core.lasso import solve_mu_lasso

SOLVERS = ("torch", "torch-sets", "spams")


def solve(G: torch.Tensor, B: torch.Tensor, mu: float, solver: str, **kw) -> torch.Tensor:
    """solver "torch-sets": the torch solver forced onto per-class working sets (its mode for
    large m on CPUs) instead of dense mode."""
    if solver != "torch-sets":
        return solve_mu_lasso(G, B, mu, solver=solver, **kw)
    dense = lasso._dense
    lasso._dense = lambda *args: False
    try:
        return solve_mu_lasso(G, B, mu, solver="torch", **kw)
    finally:
        lasso._dense = dense


def objective(G: torch.Tensor, B: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """f_j = w_j^T G w_j - 2 w_j^T b_j, one per class."""
    W = torch.as_tensor(W, dtype=torch.float64)
    return (W * (G @ W)).sum(0) - 2 * (W * B).sum(0)


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).abs() / b.abs().clamp_min(1e-12)).max())


def spams_reference(G: torch.Tensor, B: torch.Tensor, mu: float) -> torch.Tensor:
    """SPAMS lasso (mode 0: ||w||_1 <= mu) straight from (G, B)."""
    m, C = B.shape
    X = np.zeros((m, C), order="F")
    X[0] = 1e15  # only ||x_j||^2 is used; m rows so that up to m steps are allowed
    threads = torch.get_num_threads()
    try:
        W = spams.lasso(X, Q=np.asfortranarray(G.numpy()), q=np.asfortranarray(B.numpy()),
                        lambda1=mu, mode=0, L=m, numThreads=1)
    finally:
        torch.set_num_threads(threads)
    return torch.from_numpy(W.toarray())


def cvx_reference(X: np.ndarray, L: np.ndarray, mu: float) -> torch.Tensor:
    """min ||X w - l_j||^2 s.t. ||w||_1 <= mu by a conic solver, per class."""
    out = []
    for j in range(L.shape[1]):
        w = cp.Variable(X.shape[1])
        cp.Problem(cp.Minimize(cp.sum_squares(X @ w - L[:, j])), [cp.norm1(w) <= mu]).solve(
            solver=cp.CLARABEL
        )
        out.append(w.value)
    return torch.from_numpy(np.array(out).T)


def random_problem(n: int, m: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sparse non-negative unit-norm rows and one-hot labels."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, m)) ** 2 * (rng.random((n, m)) < 0.5)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return X, np.eye(classes)[rng.integers(0, classes, n)]


def layered_problem(n: int, layers: tuple[int, ...], classes: int, seed: int):
    """Correlated energies, L1 within each layer, then L2 (METHOD.md): rank-deficient G."""
    rng = np.random.default_rng(seed)
    m = sum(layers)
    y = rng.integers(0, classes, n)
    z = rng.standard_normal((classes, 6))[y] + rng.standard_normal((n, 6))
    s = np.maximum(z @ rng.standard_normal((6, m)) + 0.3 * rng.standard_normal((n, m)), 0) ** 2
    s[:, np.cumsum(layers) - 1] += 1e-3  # no layer entirely silent in any image
    parts = np.split(s, np.cumsum(layers)[:-1], axis=1)
    X = np.hstack([p / np.maximum(p.sum(1, keepdims=True), 1e-12) for p in parts])
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return X, np.eye(classes)[y]


def stats(X: np.ndarray, L: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(X.T @ X), torch.from_numpy(X.T @ L)


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("n,m", [(80, 24), (12, 40)])
@pytest.mark.parametrize("mu", [0.3, 3.0])
def test_matches_spams_and_cvxpy(solver: str, n: int, m: int, mu: float) -> None:
    X, L = random_problem(n, m, 3, seed=n + m)
    G, B = stats(X, L)
    W = solve(G, B, mu, solver)
    assert W.shape == (m, 3) and W.dtype == torch.float64
    assert float(W.abs().sum(0).max()) <= mu * (1 + 1e-9)
    f = objective(G, B, W)
    f_cvx = objective(G, B, cvx_reference(X, L, mu))
    f_spams = objective(G, B, spams_reference(G, B, mu))
    assert relative(f, f_cvx) <= 1e-6
    assert relative(f, f_spams) <= 1e-6
    assert bool((f <= f_cvx + 1e-9 * f_cvx.abs()).all())  # never worse than the conic solver
    if m < n:  # general position, full column rank: the solution is unique
        torch.testing.assert_close(W, spams_reference(G, B, mu), atol=1e-7, rtol=0)


@pytest.mark.parametrize("solver", SOLVERS)
def test_layer_normalised_responses(solver: str) -> None:
    # every layer sums to 1/||x||: G has (layers - 1) exact null directions
    X, L = layered_problem(300, (6, 10, 16), 5, seed=3)
    G, B = stats(X, L)
    assert int(np.linalg.matrix_rank(X)) == 32 - 2
    W = solve(G, B, 2.0, solver)
    f = objective(G, B, W)
    assert relative(f, objective(G, B, spams_reference(G, B, 2.0))) <= 1e-9
    assert relative(f, objective(G, B, cvx_reference(X, L, 2.0))) <= 1e-6
    torch.testing.assert_close(W.abs().sum(0), torch.full((5,), 2.0, dtype=torch.float64))


@pytest.mark.parametrize("solver", SOLVERS)
def test_inactive_constraint_full_rank_gives_least_squares(solver: str) -> None:
    X, L = random_problem(60, 15, 3, seed=1)
    G, B = stats(X, L)
    W = solve(G, B, 1e6, solver)
    torch.testing.assert_close(W, torch.linalg.solve(G, B), atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("first_set", [128, 12])
def test_inactive_constraint_rank_deficient_gives_least_l1_minimiser(
    solver: str, first_set: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 12: the first working set already holds a least-squares minimiser, not the least-L1 one
    monkeypatch.setattr(lasso, "_FIRST_SET", first_set)
    monkeypatch.setattr(lasso, "_MIN_GROWTH", 4)
    X, L = random_problem(10, 120, 3, seed=2)
    G, B = stats(X, L)
    W = solve(G, B, 1e6, solver)
    f_min = -(B * (torch.linalg.pinv(G) @ B)).sum(0)  # least-squares minimum of f
    assert relative(objective(G, B, W), f_min) <= 1e-9
    for j in range(3):  # least L1 norm among the minimisers (a linear program)
        w = cp.Variable(120)
        l1 = cp.Problem(cp.Minimize(cp.norm1(w)), [X @ w == X @ W[:, j].numpy()]).solve(
            solver=cp.CLARABEL
        )
        assert abs(float(W[:, j].abs().sum()) - l1) <= 1e-6 * l1


@pytest.mark.parametrize("few", [2, 8, 10**6])  # 10**6: the sets always double
def test_several_working_set_rounds_and_chunks(few: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lasso, "_FEW", few)
    monkeypatch.setattr(lasso, "_FIRST_SET", 4)
    monkeypatch.setattr(lasso, "_MIN_GROWTH", 4)
    monkeypatch.setattr(lasso, "_CPU_CHUNK_BYTES", 8 * 2 * 40 * 40 * 3)  # a few classes per chunk
    X, L = layered_problem(150, (8, 8, 24), 7, seed=5)
    G, B = stats(X, L)
    W = solve(G, B, 4.0, "torch-sets")
    f_ref = objective(G, B, spams_reference(G, B, 4.0))
    assert relative(objective(G, B, W), f_ref) <= 1e-9
    assert int((W != 0).sum(0).max()) > 4  # more actives than the first working set held


def test_working_sets_double_while_many_features_violate_then_add_four_per_violator() -> None:
    sizes = torch.tensor([512, 512, 128, 128])
    violators = torch.tensor([16, 100, 1000, 3])
    # 16 * 8 <= 512: few, 4 * 16; 100 * 8 > 512: double; 3 violators: at least _MIN_GROWTH
    assert lasso._growth(sizes, violators).tolist() == [64, 512, 128, lasso._MIN_GROWTH]
    assert lasso._growth(torch.tensor([512]), torch.tensor([40])).tolist() == [160]


@pytest.mark.parametrize("solver", SOLVERS)
def test_duplicated_and_zero_features(solver: str) -> None:
    X, L = random_problem(60, 12, 3, seed=4)
    Xd = np.hstack([X, X[:, [0, 5, 5]], np.zeros((60, 1))])  # features 12..14 copy 0, 5, 5
    G, B = stats(Xd, L)
    W = solve(G, B, 1.0, solver)
    W_base = solve(*stats(X, L), 1.0, solver)
    assert relative(objective(G, B, W), objective(G, B, cvx_reference(Xd, L, 1.0))) <= 1e-6
    assert bool((W[12:] == 0).all())  # a copy's weight goes to the first of its group
    torch.testing.assert_close(W[:12], W_base, atol=1e-9, rtol=0)


def test_identical_and_silent_features_are_merged() -> None:
    rng = np.random.default_rng(9)
    a, b = rng.random(20), rng.random(20)
    X = np.stack([a, b, a, np.zeros(20), b, a + 1e-3], 1)
    G = torch.from_numpy(X.T @ X)
    assert lasso._distinct_features(G).tolist() == [0, 1, 5]


def test_planted_feature_gets_the_largest_positive_weight() -> None:
    rng = np.random.default_rng(0)
    n, m, classes = 240, 30, 4
    planted = [7, 3, 19, 25]  # class j is decided by feature planted[j]
    y = np.arange(n) % classes
    X = 0.3 * rng.random((n, m))
    X[np.arange(n), np.array(planted)[y]] = 1.0
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    G, B = stats(X, np.eye(classes)[y])
    for solver in SOLVERS:
        W = solve(G, B, 5.0, solver)
        assert W.argmax(0).tolist() == planted
        assert bool((W[planted, range(classes)] > 0).all())


def test_all_zero_class_and_caller_tensors() -> None:
    X, L = random_problem(50, 10, 3, seed=6)
    L[:, 1] = 0  # a class without images
    G32, B32 = (t.float().requires_grad_() for t in stats(X, L))
    G0, B0 = G32.detach().clone(), B32.detach().clone()
    W = solve_mu_lasso(G32, B32, 1.0)
    assert W.dtype == torch.float64 and W.device == G32.device
    assert bool((W[:, 1] == 0).all()) and bool((W[:, [0, 2]] != 0).any())
    assert torch.equal(G32, G0) and torch.equal(B32, B0) and G32.requires_grad


def test_spams_keeps_torch_thread_count() -> None:
    X, L = random_problem(50, 10, 3, seed=7)
    before = torch.get_num_threads()
    solve_mu_lasso(*stats(X, L), 1.0, solver="spams")
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("mu", [0.5, 3.0, 1e6])
def test_dense_mode_and_working_sets_agree(mu: float) -> None:
    X, L = layered_problem(60, (8, 16, 16), 5, seed=10)  # m = 40 > rank
    G, B = stats(X, L)
    W = solve(G, B, mu, "torch")  # dense (its mode on GPUs)
    W_ws = solve(G, B, mu, "torch-sets")
    assert relative(objective(G, B, W), objective(G, B, W_ws)) <= 1e-9
    torch.testing.assert_close(W.abs().sum(0), W_ws.abs().sum(0), atol=1e-7, rtol=1e-9)
    if mu < 10:
        assert relative(objective(G, B, W), objective(G, B, spams_reference(G, B, mu))) <= 1e-9


def test_solvers_agree_and_torch_runs_on_cuda_when_present() -> None:
    X, L = layered_problem(200, (8, 16), 6, seed=8)
    G, B = stats(X, L)
    W_cpu = solve_mu_lasso(G, B, 3.0, solver="torch")
    torch.testing.assert_close(W_cpu, solve_mu_lasso(G, B, 3.0, solver="spams"), atol=1e-9, rtol=0)
    if torch.cuda.is_available():
        W_gpu = solve_mu_lasso(G.cuda(), B.cuda(), 3.0, solver="torch")
        assert W_gpu.device.type == "cuda"
        torch.testing.assert_close(W_gpu.cpu(), W_cpu, atol=1e-9, rtol=0)


@pytest.mark.parametrize("mu", [0, -1.0, float("nan"), float("inf"), True, "10"])
def test_bad_mu(mu) -> None:
    G, B = stats(*random_problem(20, 5, 2, seed=0))
    with pytest.raises(VebiError, match="mu"):
        solve_mu_lasso(G, B, mu)


def test_bad_input() -> None:
    G, B = stats(*random_problem(20, 5, 2, seed=0))
    cases = [
        ((G[:, :4], B, 1.0), {}, "square"),
        ((G, B[:4], 1.0), {}, r"\(m, C\)"),
        ((G, B[:, 0], 1.0), {}, r"\(m, C\)"),
        ((G.masked_fill(torch.eye(5, dtype=torch.bool), float("nan")), B, 1.0), {}, "non-finite"),
        ((G, B.masked_fill(B > 0, float("inf")), 1.0), {}, "non-finite"),
        ((G + torch.triu(torch.ones(5, 5), 1), B, 1.0), {}, "symmetric"),
        ((G, B, 1.0), {"solver": "cvx"}, "solver"),
        ((G, B, 1.0), {"tol": 0}, "tol"),
        ((G, B, 1.0), {"max_iter": 0}, "max_iter"),
        ((G.numpy(), B, 1.0), {}, "torch tensors"),
    ]
    for args, kwargs, message in cases:
        with pytest.raises(VebiError, match=message):
            solve_mu_lasso(*args, **kwargs)
    zero = G.clone()
    zero[0], zero[:, 0] = 0, 0
    with pytest.raises(VebiError, match="same responses"):
        solve_mu_lasso(zero, B, 1.0)
    with pytest.raises(VebiError, match="max_iter=2"):
        solve_mu_lasso(G, B, 100.0, solver="torch", max_iter=2)


@pytest.mark.parametrize("solver", SOLVERS)
def test_float32_gram_is_solved_as_its_float64_values(solver: str) -> None:
    """A float32 G (collected with --gram-dtype float32) is read in float64 piece by piece, not copied:
    the answer is the exact solution for the float32 values."""
    X, L = layered_problem(300, (16, 24, 32), 4, seed=3)
    G, B = stats(X, L)
    G32 = G.float()
    W = solve(G32, B, 2.0, solver)
    ref = spams_reference(G32.double(), B, 2.0)
    assert relative(objective(G32.double(), B, W), objective(G32.double(), B, ref)) <= 1e-9


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_products_with_sparse_weights_read_only_their_columns(dtype, monkeypatch) -> None:
    g = torch.Generator().manual_seed(0)
    A = torch.randn(50, 37, generator=g, dtype=torch.float64)
    G = (A.T @ A).to(dtype)
    X = torch.zeros(37, 4, dtype=torch.float64)
    X[[3, 8, 30], :3] = torch.randn(3, 3, generator=g, dtype=torch.float64)
    monkeypatch.setattr(lasso, "_BLOCK_BYTES", 8 * 3 * 5)  # 5 rows of G at a time
    torch.testing.assert_close(lasso._gram_times(G, X), G.double() @ X, rtol=1e-15, atol=1e-12)


def test_fit_refused_in_one_line_when_its_memory_exceeds_the_budget() -> None:
    G, B = stats(*random_problem(40, 12, 3, seed=1))
    for solver in ("torch", "spams"):
        with pytest.raises(VebiError, match=rf"\({solver}\) on 12 features and 3 classes needs about .* more than "
                                            r"1\.0 KiB \(the given budget\)") as info:
            solve_mu_lasso(G, B, 1.0, solver=solver, memory_budget="1KiB")
        assert "\n" not in str(info.value)


def test_auto_leaves_spams_when_its_copy_of_g_does_not_fit(monkeypatch) -> None:
    X, L = layered_problem(120, (8, 16), 3, seed=4)
    G, B = stats(X, L)
    m, C = B.shape
    monkeypatch.setattr(lasso, "available", lambda dev: lasso.working_memory(m, C, m, "spams") - 1)

    def no_spams(*args):
        raise AssertionError("SPAMS ran although its copy of G did not fit")

    monkeypatch.setattr(lasso, "_spams", no_spams)
    W = solve_mu_lasso(G, B, 1.5)
    assert relative(objective(G, B, W), objective(G, B, spams_reference(G, B, 1.5))) <= 1e-9


def test_cpu_working_sets_batch_as_many_classes_as_the_budget_leaves_room_for() -> None:
    m, C, cpu = 4224, 1000, torch.device("cpu")
    need = lasso.working_memory(m, C, m, "torch")  # counts the least chunk
    assert lasso._chunk_bytes(m, C, m, need) == lasso._MIN_CHUNK_BYTES
    assert lasso._chunk_bytes(m, C, m, need + 2**27) == lasso._MIN_CHUNK_BYTES + 2**27
    assert lasso._chunk_bytes(m, C, m, need + 2**40) == lasso._CPU_CHUNK_BYTES
    rows = [lasso._chunk_rows(cpu, 1024, False, lasso._chunk_bytes(m, C, m, need + extra)) for extra in (0, 2**40)]
    assert rows[0] < rows[1]


def test_a_tight_budget_solves_the_same_in_smaller_batches(monkeypatch) -> None:
    X, L = layered_problem(150, (8, 8, 24), 7, seed=5)
    G, B = stats(X, L)
    m, C = B.shape
    monkeypatch.setattr(lasso, "_MIN_CHUNK_BYTES", 8 * 2 * 40 * 40)  # one class per batch at the least
    monkeypatch.setattr(lasso, "_DENSE_CPU_MAX", 0)
    batches: list[int] = []
    homotopy = lasso._homotopy

    def counted(G, bt, *args):
        batches.append(bt.shape[0])
        return homotopy(G, bt, *args)

    monkeypatch.setattr(lasso, "_homotopy", counted)
    loose = solve_mu_lasso(G, B, 4.0, solver="torch")
    assert max(batches) > 1
    batches.clear()
    tight = solve_mu_lasso(G, B, 4.0, solver="torch", memory_budget=lasso.working_memory(m, C, m, "torch"))
    assert max(batches) == 1
    torch.testing.assert_close(tight, loose, rtol=0, atol=1e-12)
