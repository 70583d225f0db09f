"""The statistics' device path: nothing read back per batch, exact top-K merging, float32 G."""

import torch

from conftest import tiny_cnn
from vebi.core.collect import collect
from vebi.core.features import FeatureSpace
from vebi.core.stats import FeatureStats, StatsConfig


def test_collection_reads_nothing_back_from_the_device():
    # a "meta" tensor has no values: int(), bool(), .item(), .cpu() or a data-dependent shape on it
    # raise, just where a CUDA run would wait for the GPU; the whole loop must still run
    model = tiny_cnn().to("meta")
    data = [(torch.rand(4, 3, 10, 10), torch.tensor([0, 1, 2, 0]), torch.arange(4 * i, 4 * i + 4)) for i in range(3)]
    for labels in ("true", "predicted"):
        stats = collect(model, data, labels=labels, top_k=2, memory_budget="1GiB", progress=False)
        assert stats.gram.device.type == "meta" and stats.count == 12 and stats.scored == 12


def _reference_topk(values: torch.Tensor, ids: torch.Tensor, k: int) -> list[list[int]]:
    """Per feature, ids of the k largest values, ties to the smaller id (plain sorting)."""
    return [[i for _, i in sorted(zip((-values[:, f]).tolist(), ids.tolist()))[:k]] for f in range(values.shape[1])]


def test_topk_equals_sorting_everything_with_ties_negatives_and_any_id_order():
    g = torch.Generator().manual_seed(5)
    n, m, k = 240, 6, 4
    values = (torch.rand(n, m, generator=g) * 4 - 2).round()  # -2..2 in whole numbers: ties everywhere
    ids = torch.randperm(10_000, generator=g)[:n]
    yx = torch.randint(0, 9, (n, m, 2), generator=g)
    stats = FeatureStats(StatsConfig(FeatureSpace(("a",), (m,)), ("x",), top_k=k))
    for s in range(0, n, 7):  # after the first batches, most features take no new image (the CPU shortcut)
        stats.update(values[s:s + 7], torch.zeros(len(values[s:s + 7]), dtype=torch.long), ids[s:s + 7], yx[s:s + 7])
    expected = _reference_topk(values, ids, k)
    assert stats.top_indices.tolist() == expected
    row = {int(i): r for r, i in enumerate(ids)}
    for f in range(m):
        assert stats.top_values[f].tolist() == [values[row[i], f].item() for i in expected[f]]
        assert stats.top_yx[f].tolist() == [yx[row[i], f].tolist() for i in expected[f]]


def test_float32_gram_is_close_and_halves_the_memory():
    g = torch.Generator().manual_seed(2)
    x = torch.rand(50, 8, generator=g)
    labels, ids, yx = torch.zeros(50, dtype=torch.long), torch.arange(50), torch.zeros(50, 8, 2, dtype=torch.long)
    s64 = FeatureStats(StatsConfig(FeatureSpace(("a",), (8,)), ("x",)))
    s32 = FeatureStats(StatsConfig(FeatureSpace(("a",), (8,)), ("x",), gram_dtype=torch.float32))
    for s in (s64, s32):
        s.update(x, labels, ids, yx)
    assert s32.gram.nbytes * 2 == s64.gram.nbytes and s32.cross.dtype == torch.float64
    torch.testing.assert_close(s32.gram.double(), x.double().T @ x.double(), rtol=1e-6, atol=0)
    assert s32.merge(s32).gram.dtype == torch.float32 and s32.to("cpu").gram.dtype == torch.float32
