"""The memory estimate is the statistics' real size, and the guard stops a run before it allocates."""

import pytest
import torch

from conftest import tiny_cnn
from vebi.cli import main
from vebi.core.collect import collect
from vebi.errors import VebiError
from vebi.core.features import FeatureSpace
from vebi.core.memory import ENV_BUDGET, estimate, parse_size
from vebi.core.stats import STATES, DeviceState, FeatureStats, StatsConfig


@pytest.mark.parametrize("gram_dtype", [torch.float64, torch.float32])
def test_estimate_equals_the_tensors_of_the_statistics(gram_dtype):
    stats = FeatureStats(StatsConfig(FeatureSpace(("a", "b"), (7, 5)), ("x", "y", "z"), top_k=4,
                                     gram_dtype=gram_dtype))
    # every declared state that lives on the device (the host counts are Python ints)
    held = sum(s.__get__(stats).nbytes for s in STATES if isinstance(s, DeviceState))
    est = estimate(12, 3, 4, batch_size=8, gram_dtype=gram_dtype)
    assert est.state == held and est.gram == 12 * 12 * (8 if gram_dtype == torch.float64 else 4)
    # G of VGG-16's 4224 filters: 4224^2 doubles = 136.1 MiB; checkpoints add one copy of the state
    assert estimate(4224, 1000, 100, 256).gram == 142_737_408
    assert estimate(50, 3, 4, 8, checkpoint=True).working - estimate(50, 3, 4, 8).working == estimate(50, 3, 4, 8).state


def test_sizes_parse():
    assert parse_size("8GiB") == 8 * 2**30 and parse_size("500 MB") == 500_000_000
    assert parse_size("2e9") == 2_000_000_000 and parse_size("12kib") == 12 * 1024 and parse_size(77) == 77
    with pytest.raises(VebiError, match="not understood"):
        parse_size("lots")


def test_guard_refuses_before_allocating_and_names_the_ways_through():
    model = tiny_cnn()  # m = 4 + 6 features, 3 classes
    data = [(torch.rand(5, 3, 10, 10), torch.tensor([0, 1, 2, 0, 1]))]
    need = estimate(10, 3, 2, 5).total
    with pytest.raises(VebiError) as err:
        collect(model, data, top_k=2, memory_budget=need - 1, progress=False)
    for hint in ("10 features", "--layer", "--gram-dtype float32", "--memory-budget", ENV_BUDGET):
        assert hint in str(err.value)
    assert all(not m._forward_hooks for m in model.modules())
    assert collect(model, data, top_k=2, memory_budget=need, progress=False).count == 5
    # float32 G needs less: a budget between the two lets it through
    assert collect(model, data, top_k=2, memory_budget=need - 1, gram_dtype=torch.float32,
                   progress=False).gram.dtype == torch.float32


def test_cli_guard_with_a_forced_small_budget(make_folder, tmp_path, capsys, monkeypatch):
    data = make_folder(classes=3, per_class=2, size=10)
    args = ["collect", "conftest:tiny_cnn", str(data), "-o", str(tmp_path / "run"), "--top-k", "2"]
    monkeypatch.setenv(ENV_BUDGET, "1KiB")
    assert main(args) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "vebi:" in line]  # progress bar aside
    assert len(err) == 1 and err[0].startswith("vebi: error: the statistics of 10 features need about")
    assert f"(${ENV_BUDGET})" in err[0] and not (tmp_path / "run").exists()
    assert main([*args, "--memory-budget", "1GiB"]) == 0  # the option wins over the variable
