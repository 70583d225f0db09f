"""Collection across processes: sharding without duplicates, and torchrun (gloo) equal to one process."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DistributedSampler

from vebi.io.artifacts import load_stats
from vebi.cli import main
from vebi.core.distributed import Dist, shard
from vebi.errors import VebiError

NET = f"{Path(__file__).parent / '_scale_net.py'}:net"
BIN = Path(sys.executable).parent


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("n", [1, 2, 7, 13, 14])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_shards_cover_every_image_exactly_once(n, world):
    if n < world:
        with pytest.raises(VebiError, match="cannot be shared"):
            shard(n, Dist(0, world))
        return
    shards = [list(shard(n, Dist(r, world))) for r in range(world)]
    assert sorted(i for s in shards for i in s) == list(range(n))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    for r, mine in enumerate(shards):
        # DistributedSampler's order, with its padding (repeats of the first images) left out
        padded = list(DistributedSampler(range(n), num_replicas=world, rank=r, shuffle=False))
        assert padded[:len(mine)] == mine and len(padded) - len(mine) <= 1


def test_torchrun_two_processes_equal_one_process(make_folder, tmp_path):
    data = make_folder(classes=3, per_class=5, size=12)  # 15 images: shards of 8 and 7
    args = [NET, str(data), "--top-k", "4", "-b", "3"]
    assert main(["collect", *args, "-o", str(tmp_path / "one")]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([str(BIN / "torchrun"), "--standalone", "--nproc-per-node", "2", "--no-python",
                           str(BIN / "vebi"), "collect", *args, "-o", str(tmp_path / "two"), "--checkpoint-every", "1"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "collected 15 images" in done.stdout and "in 2 processes" in done.stdout
    assert done.stdout.count("collected") == 1  # rank 0 reports, rank 1 stays quiet
    assert not (tmp_path / "two" / "checkpoints").exists()
    one, two = load_stats(tmp_path / "one"), load_stats(tmp_path / "two")
    assert _rel(two.gram, one.gram) <= 1e-9 and _rel(two.cross, one.cross) <= 1e-9
    assert _rel(two.feature_sum, one.feature_sum) <= 1e-9
    assert two.count == one.count == 15 and two.correct == one.correct and two.scored == 15
    assert torch.equal(two.class_counts, one.class_counts) and one.class_counts.tolist() == [5, 5, 5]
    for f in range(one.space.size):
        assert set(two.top_indices[f].tolist()) == set(one.top_indices[f].tolist())
    assert torch.equal(two.top_indices, one.top_indices) and torch.equal(two.top_yx, one.top_yx)
    # every image was counted once: the top-K of the 15 images holds 4 distinct ids per feature
    assert all(len(set(row)) == 4 for row in two.top_indices.tolist())
