import pytest
import torch

from conftest import tiny_cnn
from vebi.core.collect import collect
from vebi.errors import VebiError
from vebi.core.features import FeatureSpace
from vebi.core.stats import FeatureStats, StatsConfig, merge_topk


def _batches(images, labels, batch_size, offset=0):
    return [(images[i:i + batch_size], labels[i:i + batch_size],
             torch.arange(offset + i, offset + min(i + batch_size, len(images))))
            for i in range(0, len(images), batch_size)]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative difference in Frobenius norm."""
    return float((a - b).norm() / b.norm())


def _assert_same(a: FeatureStats, b: FeatureStats, rtol=1e-6):
    # the forward pass runs in float32, whose conv kernels may sum in another order per batch size
    for name in ("gram", "cross", "feature_sum"):
        assert _rel(getattr(a, name), getattr(b, name)) <= rtol, name
    assert torch.equal(a.class_counts, b.class_counts)
    assert a.count == b.count and a.correct == b.correct
    assert torch.equal(a.top_indices, b.top_indices)
    torch.testing.assert_close(a.top_values, b.top_values)
    assert torch.equal(a.top_yx, b.top_yx)


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(1)
    images = torch.rand(40, 3, 12, 12, generator=g)
    labels = torch.randint(0, 3, (40,), generator=g)
    return images, labels


def test_merge_of_halves_equals_one_pass(data):
    images, labels = data
    model = tiny_cnn()
    full = collect(model, _batches(images, labels, 8), top_k=5, progress=False)
    first = collect(model, _batches(images[:17], labels[:17], 8), top_k=5, progress=False)
    second = collect(model, _batches(images[17:], labels[17:], 8, offset=17), top_k=5, progress=False)
    _assert_same(first.merge(second), full)
    _assert_same(second.merge(first), full)


def test_batch_size_does_not_change_statistics(data):
    images, labels = data
    model = tiny_cnn()
    a = collect(model, _batches(images, labels, 1), top_k=7, progress=False)
    b = collect(model, _batches(images, labels, 40), top_k=7, progress=False)
    _assert_same(a, b)
    # the statistics are what the definitions say: G = X^T X, B = X^T L
    assert a.count == 40 and a.class_counts.tolist() == torch.bincount(labels, minlength=3).tolist()


def test_gram_and_cross_are_the_definitions(data):
    images, labels = data
    model = tiny_cnn()
    from vebi.layers import capture_outputs
    from vebi.core.responses import responses

    stats = collect(model, _batches(images, labels, 16), top_k=3, progress=False)
    with capture_outputs(model, stats.space.layers) as acts, torch.no_grad():
        model.eval()
        model(images)
    x = responses(acts, stats.space).double()
    onehot = torch.nn.functional.one_hot(labels, 3).double()
    torch.testing.assert_close(stats.gram, x.T @ x)
    torch.testing.assert_close(stats.cross, x.T @ onehot)
    # top-1 image of each feature is the argmax of its column
    assert torch.equal(stats.top_indices[:, 0], x.argmax(dim=0))


def test_topk_ties_go_to_smaller_index_regardless_of_order():
    empty = (torch.full((1, 0), 0.0), torch.zeros(1, 0, dtype=torch.int64), torch.zeros(1, 0, 2, dtype=torch.int64))
    a = (torch.tensor([[1.0, 1.0]]), torch.tensor([[7, 3]]), torch.zeros(1, 2, 2, dtype=torch.int64))
    b = (torch.tensor([[1.0, 2.0]]), torch.tensor([[5, 9]]), torch.zeros(1, 2, 2, dtype=torch.int64))
    ab = merge_topk(merge_topk(empty, a, 3), b, 3)
    ba = merge_topk(merge_topk(empty, b, 3), a, 3)
    assert ab[1].tolist() == [[9, 3, 5]] == ba[1].tolist()


def test_merge_rejects_incompatible_and_bad_labels():
    s1 = FeatureStats(StatsConfig(FeatureSpace(("a",), (2,)), ("x", "y")))
    s2 = FeatureStats(StatsConfig(FeatureSpace(("a",), (2,)), ("x", "y"), response="max"))
    with pytest.raises(VebiError, match="response"):
        s1.merge(s2)
    with pytest.raises(VebiError, match="outside"):
        s1.update(torch.ones(1, 2), torch.tensor([5]), torch.tensor([0]), torch.zeros(1, 2, 2, dtype=torch.int64))
