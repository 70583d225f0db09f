"""Every declared state of the statistics survives merge, device moves, all-reduce, save/load and checkpoints.

The responses are small whole numbers (|x| <= 4, N = 60), so every product and partial sum in G,
B and s is an integer below 2^24: exact in float32 and float64 whatever the order of summation.
Hence the comparisons below are exact (``torch.equal``), also for shards summed in another order.
"""

import json
from dataclasses import replace
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import save_file

from vebi.core.distributed import reduce_stats
from vebi.core.features import FeatureSpace
from vebi.core.stats import STATES, FeatureStats, StatsConfig
from vebi.errors import VebiError
from vebi.io.artifacts import STATS_FORMAT, load_stats, load_stats_file, save_stats, save_stats_file
from vebi.io.checkpoint import Checkpointer

N, M, BATCH = 60, 5, 7
SPACE = FeatureSpace(("a", "b"), (2, 3))


def _config(gram_dtype=torch.float64) -> StatsConfig:
    return StatsConfig(SPACE, ("p", "q", "r"), "max", "true", 4, {"a": (3, 3), "b": (2, 2)}, (12, 12), gram_dtype)


def _batches() -> list[tuple[torch.Tensor, ...]]:
    """Batches of (x, labels, image ids, yx, predictions or None): ties everywhere, ids not in order."""
    g = torch.Generator().manual_seed(11)
    x = torch.randint(-4, 5, (N, M), generator=g).float()
    labels = torch.randint(0, 3, (N,), generator=g)
    predictions = torch.where(torch.rand(N, generator=g) < 0.6, labels, (labels + 1) % 3)
    ids = torch.randperm(1000, generator=g)[:N]
    yx = torch.randint(0, 3, (N, M, 2), generator=g)
    return [(x[s:s + BATCH], labels[s:s + BATCH], ids[s:s + BATCH], yx[s:s + BATCH],
             None if s // BATCH == 2 else predictions[s:s + BATCH])  # one batch without predictions
            for s in range(0, N, BATCH)]


def _collected(batches, gram_dtype=torch.float64) -> FeatureStats:
    stats = FeatureStats(_config(gram_dtype))
    for batch in batches:
        stats.update(*batch)
    return stats


def _assert_same(a: FeatureStats, b: FeatureStats) -> None:
    assert a.config == b.config
    mine, theirs = a.state_dict(), b.state_dict()
    for s in STATES:
        assert mine[s.name].dtype == theirs[s.name].dtype and torch.equal(mine[s.name], theirs[s.name]), s.name


@pytest.fixture(params=[torch.float64, torch.float32], ids=["G64", "G32"])
def whole(request) -> FeatureStats:
    return _collected(_batches(), request.param)


def test_the_declaration_is_all_the_state_and_the_data_moves_every_state(whole):
    assert list(whole.state_dict()) == [s.name for s in STATES]
    assert set(vars(whole)) == {s.name for s in STATES} | {"config", "device"}
    empty = FeatureStats(whole.config).state_dict()
    changed = {n for n, t in whole.state_dict().items() if not torch.equal(t, empty[n])}
    assert changed == {s.name for s in STATES}  # so that the comparisons below can fail on any state
    assert whole.count == N and whole.scored == N - BATCH and 0 < whole.correct < whole.scored
    assert whole.gram.dtype == whole.config.gram_dtype


@pytest.mark.parametrize("bounds", [(0, 4, 9), (0, 0, 4, 9), (0, 2, 2, 6, 9)])  # batch ranges; 9 batches
def test_merge_of_shards_equals_one_pass(whole, bounds):
    batches = _batches()
    shards = [_collected(batches[i:j], whole.config.gram_dtype) for i, j in zip(bounds, bounds[1:])]
    forward, backward = shards[0], shards[-1]
    for s in shards[1:]:
        forward = forward.merge(s)
    for s in reversed(shards[:-1]):
        backward = backward.merge(s)
    _assert_same(forward, whole)
    _assert_same(backward, whole)


def test_save_load_and_device_moves_keep_every_state(whole, tmp_path):
    save_stats(whole, tmp_path)
    back = load_stats(tmp_path)
    _assert_same(back, whole)
    _assert_same(whole.to("cpu"), whole)
    on_meta = whole.to("meta")
    assert all(on_meta.state_dict()[s.name].shape == whole.state_dict()[s.name].shape for s in STATES)
    # the loaded statistics go on collecting exactly like the original ones
    extra = (torch.ones(2, M), torch.tensor([0, 2]), torch.tensor([5000, 5001]), torch.zeros(2, M, 2, dtype=torch.long),
             torch.tensor([0, 1]))
    whole.update(*extra)
    back.update(*extra)
    _assert_same(back, whole)


def test_checkpoint_restores_every_state(whole, tmp_path):
    path = tmp_path / "rank0-of-1.safetensors"
    saver = Checkpointer(path, 1, {"data": "x"})
    saver(whole)
    resumed = Checkpointer(path, 1, {"data": "x"}).load()
    assert resumed.batches == 1
    _assert_same(resumed.stats, whole)


def test_config_round_trips_and_must_agree_to_merge():
    config = _config(torch.float32)
    assert StatsConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(VebiError, match="different gram_dtype"):
        FeatureStats(config).merge(FeatureStats(_config()))
    with pytest.raises(VebiError, match="lacks or misstates 'gram_dtype'"):
        StatsConfig.from_dict({k: v for k, v in config.to_dict().items() if k != "gram_dtype"})


def test_files_of_an_older_format_or_missing_a_state_are_refused(whole, tmp_path):
    save_stats(whole, tmp_path)
    old = {k: v for k, v in whole.state_dict().items() if k not in ("hits", "count", "scored")}
    save_file({k: v.contiguous() for k, v in old.items()}, str(tmp_path / "stats.safetensors"))  # format 1
    with pytest.raises(VebiError, match=f"format 1, this vebi reads format {STATS_FORMAT}.*re-run `vebi collect`"):
        load_stats(tmp_path)
    meta = {"format": STATS_FORMAT, "config": whole.config.to_dict()}
    save_file({k: v.contiguous() for k, v in old.items()}, str(tmp_path / "x.safetensors"),
              metadata={"vebi": json.dumps(meta)})
    with pytest.raises(VebiError, match="lack hits, count, scored"):
        load_stats_file(tmp_path / "x.safetensors")
    ckpt = tmp_path / "ckpt.safetensors"
    save_file({k: v.contiguous() for k, v in old.items()}, str(ckpt),
              metadata={"vebi": json.dumps({"schema": 1, "key": {}, "batches": 3})})
    with pytest.raises(VebiError, match="unreadable by this vebi .*format 1.*delete it"):
        Checkpointer(ckpt, 1, {}).load()
    save_stats_file(tmp_path / "other.safetensors", FeatureStats(replace(whole.config, top_k=2)))
    (tmp_path / "stats.safetensors").replace(tmp_path / "mine.safetensors")
    (tmp_path / "other.safetensors").replace(tmp_path / "stats.safetensors")
    with pytest.raises(VebiError, match="is not the file stats.json was written with"):  # its hash differs
        load_stats(tmp_path)


def _reduce_in_rank(rank: int, world: int, init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        batches = _batches()
        stats = reduce_stats(_collected(batches[rank::world]))
        if rank == 0:
            torch.save(stats.state_dict(), out)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_all_reduce_of_ranks_equals_one_pass(tmp_path):
    init = f"file://{tempfile.mkdtemp(dir=tmp_path)}/rendezvous"
    out = str(tmp_path / "reduced.pt")
    mp.spawn(_reduce_in_rank, args=(2, init, out), nprocs=2, join=True, start_method="spawn")
    reduced = FeatureStats.from_state_dict(_config(), torch.load(out))
    _assert_same(reduced, _collected(_batches()))
