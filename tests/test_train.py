"""An8Net and the trainer: architecture, reproducibility, saved model reloadable by spec, accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vebi.an8flower import SINGLE_6C, DatasetConfig, generate
from vebi.cli import main
from vebi.errors import VebiError
from vebi.models import load_model
from vebi.an8flower.net import An8Net, an8net
from vebi.an8flower.train import TrainConfig, augment, load_folder, load_trained, train

SMALL = TrainConfig(epochs=25, batch_size=32, width=16, first_stride=2, seed=0)


@pytest.fixture(scope="module")
def flowers(tmp_path_factory) -> Path:
    """single-6c at 40 x 40: 60 train + 20 test images per class."""
    root = tmp_path_factory.mktemp("train") / "flowers"
    generate(root, DatasetConfig(SINGLE_6C, per_class=80, size=40, seed=1, test_fraction=0.25, spp=4),
             workers=2, progress=False)
    return root


def test_an8net_shapes_names_and_stride():
    net = an8net(num_classes=12, width=8, first_stride=4)
    assert net.features.conv1.stride == (4, 4) and net.features.conv1.kernel_size == (7, 7)
    names = [n for n, _ in net.named_modules()]
    for name in ("features.conv1", "features.bn1", "features.relu1", "features.pool2", "features.conv5", "classifier"):
        assert name in names
    with torch.no_grad():
        shapes = []
        x = torch.zeros(2, 3, 112, 112)
        for name, module in net.features.named_children():
            x = module(x)
            if name.startswith("conv"):
                shapes.append(tuple(x.shape[1:]))
        assert shapes == [(8, 28, 28), (8, 28, 28), (16, 14, 14), (16, 14, 14), (32, 7, 7)]
        assert net(torch.zeros(2, 3, 112, 112)).shape == (2, 12)
    plain = An8Net(3, 4, first_stride=2, batch_norm=False)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules())
    with pytest.raises(VebiError):
        An8Net(num_classes=1)


def test_augment_flips_and_shifts_by_whole_pixels():
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).reshape(2, 3, 5, 5)
    out = augment(x, 0, torch.Generator().manual_seed(0))
    for i in range(2):  # without shift: each image is itself or its mirror
        assert torch.equal(out[i], x[i]) or torch.equal(out[i], x[i].flip(-1))
    out = augment(x, 1, torch.Generator().manual_seed(3))
    for i in range(2):  # with shift 1: a 5 x 5 window of the edge-padded image or of its mirror
        windows = [
            torch.nn.functional.pad(img[None], (1, 1, 1, 1), mode="replicate")[0, :, dy:dy + 5, dx:dx + 5]
            for img in (x[i], x[i].flip(-1)) for dy in range(3) for dx in range(3)
        ]
        assert any(torch.equal(out[i], w) for w in windows)
    assert not torch.equal(out, x)


def test_trainer_reaches_high_accuracy_and_saves_a_loadable_model(flowers, tmp_path):
    result = train(flowers, tmp_path / "m", SMALL, threads=1, progress=False)
    assert result.test_accuracy >= 0.9, result.history
    assert result.class_names == SINGLE_6C.class_names
    info = json.loads(result.info_path.read_text())
    assert info["factory"] == "vebi.an8flower.net:an8net"
    assert info["model_args"] == {"num_classes": 6, "width": 16, "first_stride": 2, "first_kernel": 7, "batch_norm": True}
    assert info["input_size"] == [40, 40] and info["test_images"] == 120 and info["train_images"] == 360

    # the same model three ways: by factory spec (as the vebi CLI does), by load_trained, and re-scored
    x, y, _ = load_folder(flowers / "images" / "test")
    model = load_model(info["factory"], str(result.model_path), info["model_args"])
    again, _ = load_trained(tmp_path / "m")
    with torch.no_grad():
        logits = model(x.float() / 255.0)
        torch.testing.assert_close(again(x.float() / 255.0), logits)
    assert (logits.argmax(1) == y).float().mean().item() == pytest.approx(result.test_accuracy)
    assert not model.training
    # trained channels-last on a CPU, saved in the plain layout
    assert all(t.is_contiguous() for t in torch.load(result.model_path, weights_only=True).values())


def test_same_seed_same_weights(flowers, tmp_path):
    config = TrainConfig(epochs=1, batch_size=64, width=4, first_stride=4, seed=5)
    a = train(flowers, tmp_path / "a", config, threads=1, progress=False)
    b = train(flowers, tmp_path / "b", config, threads=1, progress=False)
    c = train(flowers, tmp_path / "c", TrainConfig(epochs=1, batch_size=64, width=4, first_stride=4, seed=6),
              threads=1, progress=False)
    assert a.model_path.read_bytes() == b.model_path.read_bytes()
    sa, sc = torch.load(a.model_path, weights_only=True), torch.load(c.model_path, weights_only=True)
    assert not torch.equal(sa["features.conv1.weight"], sc["features.conv1.weight"])
    assert torch.get_num_threads() >= 1


def test_cli_train_and_errors(flowers, tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(["train", str(flowers), "-o", str(out), "--epochs", "1", "--width", "4", "--threads", "1",
                 "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "test accuracy" in printed and "--model-arg first_stride=4" in printed
    assert (out / "model.pt").is_file() and (out / "model.json").is_file()
    assert main(["train", str(tmp_path / "missing"), "-o", str(out)]) == 2
    assert main(["train", str(flowers), "-o", str(out), "--epochs", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("vebi: error:") for line in err)


def test_shuffled_labels_train_another_model_and_are_recorded(flowers, tmp_path):
    config = TrainConfig(epochs=1, batch_size=64, width=4, first_stride=4, seed=5)
    plain = train(flowers, tmp_path / "plain", config, threads=1, progress=False)
    shuffled = train(flowers, tmp_path / "shuffled", TrainConfig(epochs=1, batch_size=64, width=4, first_stride=4,
                                                                 seed=5, shuffle_labels=True), threads=1, progress=False)
    a, b = (torch.load(r.model_path, weights_only=True) for r in (plain, shuffled))
    assert not torch.equal(a["classifier.weight"], b["classifier.weight"])  # same init, other targets
    assert json.loads(shuffled.info_path.read_text())["train"]["shuffle_labels"] is True
    assert json.loads(plain.info_path.read_text())["train"]["shuffle_labels"] is False
