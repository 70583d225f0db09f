"""Checkpoints and resume: a run stopped anywhere and restarted ends with the uninterrupted result."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from vebi.io.artifacts import load_stats
from vebi.io.checkpoint import Checkpointer
from vebi.cli import main
from vebi.core.collect import collect_dataset
from vebi.errors import VebiError

sys.path.insert(0, str(Path(__file__).parent))
from _scale_net import net  # noqa: E402

NET = f"{Path(__file__).parent / '_scale_net.py'}:net"
VEBI = Path(sys.executable).parent / "vebi"


def _assert_same(a, b):
    mine, theirs = a.state_dict(), b.state_dict()
    for name in mine:
        assert torch.equal(mine[name], theirs[name]), name
    assert a.config == b.config


class _Images(torch.utils.data.Dataset):
    """17 seeded images of 3 classes; reading item ``crash_at`` raises (a crash mid-run)."""

    classes = ["a", "b", "c"]

    def __init__(self, crash_at: int | None = None):
        g = torch.Generator().manual_seed(3)
        self.images, self.labels = torch.rand(17, 3, 10, 10, generator=g), torch.randint(0, 3, (17,), generator=g)
        self.crash_at = crash_at

    def __len__(self):
        return 17

    def __getitem__(self, i):
        if i == self.crash_at:
            raise RuntimeError("power cut")
        return self.images[i], self.labels[i]


@pytest.mark.parametrize("crash_at", [1, 4, 6, 9, 16])  # before the first checkpoint, on and between them, last batch
def test_resume_after_a_crash_equals_one_pass(tmp_path, crash_at):
    model = net()
    opts = {"batch_size": 2, "top_k": 3, "progress": False}
    whole = collect_dataset(model, _Images(), **opts)
    with pytest.raises(RuntimeError, match="power cut"):
        collect_dataset(model, _Images(crash_at), checkpoint=tmp_path, checkpoint_every=2, **opts)
    saved = list(tmp_path.glob("*.safetensors"))
    assert len(saved) == (crash_at >= 4)  # a checkpoint every 2 batches of 2 images
    done = []
    resumed = collect_dataset(model, _Images(), checkpoint=tmp_path, checkpoint_every=2, on_result=done.append,
                              **opts)
    _assert_same(resumed, whole)
    assert resumed.count == 17 and done == [resumed]
    assert not tmp_path.exists()  # checkpoint and its folder go once the result is handed over


def test_other_process_counts_are_refused_and_leftovers_cleared(tmp_path):
    opts = {"batch_size": 2, "top_k": 3, "progress": False, "checkpoint": tmp_path, "checkpoint_every": 2}
    with pytest.raises(RuntimeError, match="power cut"):
        collect_dataset(net(), _Images(crash_at=6), **opts)
    (tmp_path / ".rank0-of-1.safetensors.k1ll3d.tmp.safetensors").write_bytes(b"half written")
    stray = tmp_path / "rank1-of-2.safetensors"
    stray.write_bytes(b"")
    with pytest.raises(VebiError, match=r"another number of processes \(rank1-of-2"):
        collect_dataset(net(), _Images(), **opts)
    stray.unlink()
    assert collect_dataset(net(), _Images(), **opts).count == 17
    assert not tmp_path.exists()


def test_checkpoint_of_another_run_is_refused(tmp_path):
    stats = collect_dataset(net(), _Images(), batch_size=4, top_k=2, progress=False)
    path = tmp_path / "rank0-of-1.safetensors"
    Checkpointer(path, 1, {"batch_size": 4, "data": "x"}).save(stats)
    back = Checkpointer(path, 1, {"batch_size": 4, "data": "x"}).load()
    _assert_same(back.stats, stats)
    with pytest.raises(VebiError, match=r"another collection \(it differs in batch_size\)"):
        Checkpointer(path, 1, {"batch_size": 8, "data": "x"}).load()
    path.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken")
    with pytest.raises(VebiError, match="unreadable"):
        Checkpointer(path, 1, {"batch_size": 4, "data": "x"}).load()


def test_cli_killed_mid_run_resumes_to_the_same_result(make_folder, tmp_path):
    data = make_folder(classes=3, per_class=5, size=12)
    args = ["collect", NET, str(data), "--top-k", "4", "-b", "2", "--checkpoint-every", "2"]
    assert main([*args, "-o", str(tmp_path / "whole")]) == 0
    out, ckpt = tmp_path / "run", tmp_path / "run" / "checkpoints" / "rank0-of-1.safetensors"
    env = {**os.environ, "VEBI_TEST_DELAY": "0.25", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([str(VEBI), *args, "-o", str(out)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL and ckpt.exists()
    assert not (out / "stats.json").exists()
    done = subprocess.run([str(VEBI), *args, "-o", str(out)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    resumed_at = re.search(r"resuming from .*: (\d+) of 15 images done", done.stderr)
    assert resumed_at and 0 < int(resumed_at.group(1)) < 15
    assert not ckpt.parent.exists()
    resumed, whole = load_stats(out), load_stats(tmp_path / "whole")
    assert resumed.count == 15
    _assert_same(resumed, whole)
