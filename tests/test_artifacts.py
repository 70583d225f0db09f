import json

import pytest
import torch

from conftest import tiny_cnn
from vebi.io.artifacts import load_relevance, load_stats, save_relevance, save_stats
from vebi.core.collect import collect
from vebi.errors import VebiError
from vebi.core.relevance import Relevance


@pytest.fixture
def stats():
    g = torch.Generator().manual_seed(0)
    images, labels = torch.rand(9, 3, 10, 10, generator=g), torch.tensor([0, 1, 2] * 3)
    return collect(tiny_cnn(), [(images, labels)], top_k=4, progress=False)


def test_stats_round_trip(tmp_path, stats):
    model = tiny_cnn()
    save_stats(stats, tmp_path, model)
    back = load_stats(tmp_path, model)
    for name in ("gram", "cross", "class_counts", "feature_sum", "top_values", "top_indices", "top_yx"):
        assert torch.equal(getattr(back, name), getattr(stats, name)), name
    assert (back.space, back.class_names, back.count, back.map_sizes, back.input_size) == \
        (stats.space, stats.class_names, stats.count, stats.map_sizes, stats.input_size)
    assert not list(tmp_path.glob(".*tmp*")), "no temporary files left behind"


def test_other_schema_and_other_model_fail_clearly(tmp_path, stats):
    save_stats(stats, tmp_path, tiny_cnn())
    with pytest.raises(VebiError, match="does not match"):
        load_stats(tmp_path, tiny_cnn(num_classes=5))
    meta = json.loads((tmp_path / "stats.json").read_text())
    meta["schema"] = 999
    (tmp_path / "stats.json").write_text(json.dumps(meta))
    with pytest.raises(VebiError, match="schema version 999"):
        load_stats(tmp_path)
    with pytest.raises(VebiError, match="not found"):
        load_stats(tmp_path / "nowhere")


def test_relevance_round_trip(tmp_path, stats):
    w = torch.zeros(stats.space.size, 3, dtype=torch.float64)
    w[2, 0], w[5, 0], w[1, 2] = 0.5, -2.0, 1.0
    rel = Relevance(w, stats.space, stats.class_names, 10.0)
    assert [f.index for f in rel.relevant(0)] == [5, 2] and rel.relevant(0)[0].sign == -1
    assert rel.relevant_counts() == [2, 0, 1] and rel.union() == (1, 2, 5)
    save_relevance(rel, tmp_path)
    back = load_relevance(tmp_path)
    assert torch.equal(back.weights, w) and back.mu == 10.0 and back.space == stats.space


def test_corrupt_tensor_file(tmp_path, stats):
    save_stats(stats, tmp_path)
    (tmp_path / "stats.safetensors").write_bytes(b"garbage")
    with pytest.raises(VebiError, match="safetensors"):
        load_stats(tmp_path)
