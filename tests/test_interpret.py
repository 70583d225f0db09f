"""Average receptive-field crops: hand-computed averages, reading each image once, planted colours, save/load, CLI."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from vebi.errors import VebiError
from vebi.core.features import FeatureSpace
from vebi.interpretation.crops import Interpretation, interpret
from vebi.interpretation.store import grid_file, load_interpretations, save_interpretations
from vebi.interpretation.receptive import ReceptiveField
from vebi.core.relevance import Relevance
from vebi.core.stats import FeatureStats, StatsConfig

# --------------------------------------------------------------------------- hand-made statistics

SPACE = FeatureSpace(("a", "b"), (2, 1))  # features: 0 = a/0, 1 = a/1, 2 = b/0
FIELDS = {
    "a": ReceptiveField("a", (3, 3), (2, 2), (-1, -1)),  # 3x3 map of a 6x6 image
    "b": ReceptiveField("b", (2, 4), (1, 1), (0, -1)),
}


def _image(i: int) -> torch.Tensor:
    """6x6 image whose pixel (c, y, x) is 100 i + 10 y + x + 1000 c: every crop is recognisable."""
    y = torch.arange(6.0)[:, None]
    x = torch.arange(6.0)[None, :]
    return torch.stack([100 * i + 10 * y + x + 1000 * c for c in range(2)])


class _CountingDataset(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        self.reads: list[int] = []
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        self.reads.append(i)
        return _image(i), 0, i


def _stats() -> FeatureStats:
    stats = FeatureStats(StatsConfig(SPACE, ("p", "q"), top_k=3, map_sizes={"a": (3, 3), "b": (6, 6)},
                                     input_size=(6, 6)))
    stats.top_values = torch.tensor([[3.0, 1.0, 0.5], [2.0, 1.0, float("-inf")], [4.0, 2.0, 1.0]])
    stats.top_indices = torch.tensor([[4, 1, 2], [1, 4, -1], [1, 3, 0]])
    stats.top_yx = torch.tensor([
        [[0, 0], [1, 2], [2, 2]],   # a/0: image 4 unit (0,0) -> rows/cols [-1, 2); image 1 unit (1,2) -> [1,4)x[3,6)
        [[1, 1], [2, 0], [0, 0]],
        [[3, 0], [5, 5], [0, 0]],   # b/0: boxes rows [y, y+2), cols [x-1, x+3)
    ])
    return stats


def _relevance() -> Relevance:
    # class p: a/0 (|w| 2) then b/0 (|w| 0.5, negative); class q: a/1 only
    weights = torch.tensor([[2.0, 0.0], [0.0, 1.0], [-0.5, 0.0]], dtype=torch.float64)
    return Relevance(weights, SPACE, ("p", "q"), mu=3.0)


def _crop(i: int, top: int, left: int, h: int, w: int, fill: float) -> torch.Tensor:
    """Crop of image i at (top, left), size h x w, pixels outside the image set to ``fill``."""
    out = torch.full((2, h, w), fill)
    img = _image(i)
    for yy in range(h):
        for xx in range(w):
            if 0 <= top + yy < 6 and 0 <= left + xx < 6:
                out[:, yy, xx] = img[:, top + yy, left + xx]
    return out


def test_average_of_crops_hand_computed_with_fill_padding():
    ds = _CountingDataset(6)
    (p, q) = interpret(_relevance(), _stats(), ds, fields=FIELDS, top_k=2, size=3, fill=-7.0, progress=False)
    assert (p.class_name, q.class_name) == ("p", "q")
    assert [(f.layer, f.channel, f.weight) for f in p.features] == [("a", 0, 2.0), ("b", 0, -0.5)]
    a0 = p.features[0]
    assert a0.receptive_field == (3, 3) and a0.image_indices == (4, 1) and a0.count == 2
    expected = (_crop(4, -1, -1, 3, 3, -7.0) + _crop(1, 1, 3, 3, 3, -7.0)) / 2
    torch.testing.assert_close(a0.average, expected)
    assert float(a0.average[0, 0, 0]) == pytest.approx((-7.0 + 113.0) / 2)  # fill, and pixel (y 1, x 3) of image 1
    torch.testing.assert_close(a0.crops[0], _crop(4, -1, -1, 3, 3, -7.0))
    # q: a/1 has only 2 valid top images (third slot empty)
    assert q.features[0].image_indices == (1, 4)


def test_weighted_average_and_default_fill_is_mean_of_images_read():
    ds = _CountingDataset(6)
    (p,) = interpret(_relevance(), _stats(), ds, fields=FIELDS, top_k=3, size=3, weighted=True, classes=["p"],
                     progress=False)
    read = sorted(set(ds.reads))
    assert read == [0, 1, 2, 3, 4]  # images 5 is nobody's top image; q's features are not needed
    fill = torch.stack([_image(i) for i in read]).mean(dim=(0, 2, 3))
    crops = [_crop(4, -1, -1, 3, 3, 0), _crop(1, 1, 3, 3, 3, 0), _crop(2, 3, 3, 3, 3, 0)]
    masks = [_crop_mask(-1, -1, 3, 3), _crop_mask(1, 3, 3, 3), _crop_mask(3, 3, 3, 3)]
    padded = [c + fill[:, None, None] * (1 - m) for c, m in zip(crops, masks, strict=True)]
    expected = (3.0 * padded[0] + 1.0 * padded[1] + 0.5 * padded[2]) / 4.5
    torch.testing.assert_close(p.features[0].average, expected)


def _crop_mask(top: int, left: int, h: int, w: int) -> torch.Tensor:
    y = torch.arange(top, top + h)[:, None]
    x = torch.arange(left, left + w)[None, :]
    return ((y >= 0) & (y < 6) & (x >= 0) & (x < 6)).float()


def test_each_image_read_once_and_resize_of_non_square_field():
    ds = _CountingDataset(6)
    (p, q) = interpret(_relevance(), _stats(), ds, fields=FIELDS, top_k=3, size=4, keep_crops=1, fill=0.0,
                       progress=False)
    assert sorted(ds.reads) == [0, 1, 2, 3, 4]  # images 1 and 4 serve three features, read once
    b0 = p.features[1]
    assert b0.receptive_field == (2, 4) and b0.image_indices == (1, 3, 0)
    crop = _crop(1, 3, -1, 2, 4, 0.0)
    torch.testing.assert_close(b0.crops, crop[None])  # kept crops stay at field size when it fits in 4x4
    # the average of the 2x4 field is stretched to 4x4 (bilinear): rows of the 2-row average repeat
    mean = (crop + _crop(3, 5, 4, 2, 4, 0.0) + _crop(0, 0, -1, 2, 4, 0.0)) / 3
    stretched = F.interpolate(mean[None], size=(4, 4), mode="bilinear", align_corners=False, antialias=True)[0]
    torch.testing.assert_close(b0.average, stretched)
    torch.testing.assert_close(b0.average[:, 0], mean[:, 0])
    torch.testing.assert_close(b0.average[:, 3], mean[:, 1])
    # averages are resized once per feature; by linearity that is the mean of the resized crops
    a0 = p.features[0]
    crops = [_crop(4, -1, -1, 3, 3, 0.0), _crop(1, 1, 3, 3, 3, 0.0), _crop(2, 3, 3, 3, 3, 0.0)]
    resized = F.interpolate(torch.stack(crops), size=(4, 4), mode="bilinear", align_corners=False, antialias=True)
    torch.testing.assert_close(a0.average, resized.mean(dim=0))
    # a field larger than the common size: kept crops are shrunk to it as well
    (p2,) = interpret(_relevance(), _stats(), _CountingDataset(6), fields=FIELDS, top_k=3, size=2, keep_crops=2,
                      fill=0.0, classes=["p"], progress=False)
    shrunk = F.interpolate(torch.stack(crops[:2]), size=(2, 2), mode="bilinear", align_corners=False, antialias=True)
    torch.testing.assert_close(p2.features[0].crops, shrunk)
    assert p2.features[1].crops.shape == (2, 2, 2, 2)


def test_same_bytes_with_and_without_reader_workers():
    common = dict(fields=FIELDS, top_k=3, size=5, weighted=True, fill=0.25, progress=False)
    first = interpret(_relevance(), _stats(), _CountingDataset(6), **common)
    again = interpret(_relevance(), _stats(), _CountingDataset(6), **common)
    workers = interpret(_relevance(), _stats(), _CountingDataset(6), num_workers=1, **common)
    for other in (again, workers):
        for a, b in zip(first, other, strict=True):
            for f, g in zip(a.features, b.features, strict=True):
                assert torch.equal(f.average, g.average) and torch.equal(f.crops, g.crops)
                assert f.image_indices == g.image_indices


def test_bad_inputs_raise_vebi_errors():
    stats, rel = _stats(), _relevance()
    with pytest.raises(VebiError, match="model or the receptive fields"):
        interpret(rel, stats, _CountingDataset(6), progress=False)
    with pytest.raises(VebiError, match="layer\\(s\\) b"):
        interpret(rel, stats, _CountingDataset(6), fields={"a": FIELDS["a"]}, progress=False)
    with pytest.raises(VebiError, match="refer to image 4 but the dataset has 3 images"):
        interpret(rel, stats, _CountingDataset(3), fields=FIELDS, progress=False)

    class Small(_CountingDataset):
        def __getitem__(self, i):
            return torch.zeros(2, 5, 5)

    with pytest.raises(VebiError, match="dataset image 0 is 5x5 but the statistics were collected at 6x6"):
        interpret(rel, stats, Small(6), fields=FIELDS, progress=False)
    empty = Relevance(torch.zeros(3, 2, dtype=torch.float64), SPACE, ("p", "q"), mu=1.0)
    nothing_read = _CountingDataset(6)
    assert interpret(empty, stats, nothing_read, progress=False) == (
        Interpretation(0, "p", ()), Interpretation(1, "q", ()))
    assert nothing_read.reads == []
    with pytest.raises(VebiError, match="unknown class 'z'"):
        interpret(rel, stats, _CountingDataset(6), fields=FIELDS, classes=["z"], progress=False)


def test_save_and_load_round_trip(tmp_path):
    results = interpret(_relevance(), _stats(), _CountingDataset(6), fields=FIELDS, top_k=3, size=3,
                        keep_crops=2, fill=0.5, progress=False)
    (tmp_path / "interpretation").mkdir()
    (tmp_path / "interpretation" / "stale.png").write_bytes(b"old")
    folder = save_interpretations(results, tmp_path, {"top_k": 3})
    assert folder == tmp_path / "interpretation" and not (folder / "stale.png").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left
    loaded = load_interpretations(tmp_path)
    assert [(i.class_index, i.class_name) for i in loaded] == [(0, "p"), (1, "q")]
    for want, got in zip(results, loaded, strict=True):
        for f, g in zip(want.features, got.features, strict=True):
            assert (f.index, f.layer, f.channel, f.weight, f.receptive_field, f.image_indices) == (
                g.index, g.layer, g.channel, g.weight, g.receptive_field, g.image_indices)
            torch.testing.assert_close(f.average, g.average)
            torch.testing.assert_close(f.crops, g.crops)
    meta = json.loads((folder / "interpretation.json").read_text())
    assert (meta["settings"], meta["size"], meta["top_k"]) == ({"top_k": 3}, 3, 3)
    first = meta["classes"][0]["features"][0]
    assert (first["layer"], first["channel"], first["average"]) == ("a", 0, "000-p/000-a-c0.png")
    with Image.open(folder / first["crops"]) as strip:
        assert strip.size == (2 * 3, 3)  # two kept crops side by side
    with Image.open(folder / grid_file(results[0])) as grid:
        assert grid.mode == "RGB" and grid.size[0] >= 64
    with pytest.raises(VebiError, match="not found"):
        load_interpretations(tmp_path / "nothing")


# --------------------------------------------------------------------------- planted colours

COLOURS = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])


class _Planted(torch.utils.data.Dataset):
    """Grey noise images with a 6x6 square of the class colour at a random place."""

    def __init__(self, per_class: int, size: int = 32, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        images, labels = [], []
        for c in range(len(COLOURS)):
            for _ in range(per_class):
                image = (torch.rand(1, size, size, generator=g) * 0.5 + 0.25).expand(3, -1, -1).clone()
                y, x = torch.randint(0, size - 5, (2,), generator=g).tolist()
                image[:, y:y + 6, x:x + 6] = COLOURS[c][:, None, None]
                images.append(image)
                labels.append(c)
        self.images, self.labels = torch.stack(images), torch.tensor(labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i], int(self.labels[i]), i


def _trained_net(data: _Planted) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1),
                        nn.ReLU(), nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(16, 3))
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(0)
    for _ in range(12):
        order = torch.randperm(len(data), generator=g)
        for start in range(0, len(data), 20):
            i = order[start:start + 20]
            loss = F.cross_entropy(net(data.images[i]), data.labels[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


def test_planted_colour_square_appears_at_centre_of_top_feature_average():
    from vebi.core.collect import collect
    from vebi.core.relevance import fit_relevance

    data = _Planted(per_class=40)
    net = _trained_net(data)
    assert (net(data.images).argmax(1) == data.labels).float().mean() > 0.9
    loader = torch.utils.data.DataLoader(data, batch_size=40)
    stats = collect(net, loader, layers=["4"], top_k=20, class_names=["red", "green", "blue"], progress=False)
    relevance = fit_relevance(stats, mu=10.0)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    results = interpret(relevance, stats, data, model=net, top_k=20, size=20, progress=False)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items()) and not net.training
    for j, interp in enumerate(results):
        top = next(f for f in interp.features if f.weight > 0)  # most relevant feature voting for the class
        assert top.receptive_field == (8, 8)  # 3x3 conv (3), 2x2 pool (3 + 1), 3x3 conv at stride 2 (4 + 2 * 2)
        centre = top.average[:, 8:12, 8:12].mean(dim=(1, 2))  # 4x4 pixels around the middle of the crop
        others = [k for k in range(3) if k != j]
        assert centre[j] > 0.8 and centre[others].max() < 0.2, (interp.class_name, centre)
        # the square's colour is concentrated in the centre: the crop's corners are near grey
        assert top.average[:, :3, :3].mean(dim=(1, 2))[j] < centre[j] - 0.2


# --------------------------------------------------------------------------- CLI

MODEL_FILE = """
from torch import nn

def tiny():
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 2))
"""


def test_cli_interpret_writes_images_and_prints_where(tmp_path, capsys):
    from vebi.cli import main

    data = tmp_path / "data"
    g = torch.Generator().manual_seed(1)
    for c, name in enumerate(["cat", "dog"]):
        (data / name).mkdir(parents=True)
        for i in range(6):
            pixels = (torch.rand(16, 16, 3, generator=g) * 255).to(torch.uint8).numpy()
            pixels[..., c] = 255
            Image.fromarray(pixels).save(data / name / f"{i}.png")
    (tmp_path / "model.py").write_text(MODEL_FILE)
    run = tmp_path / "run"
    spec = f"{tmp_path / 'model.py'}:tiny"
    assert main(["collect", spec, str(data), "-o", str(run), "--top-k", "5", "-l", "1", "-l", "4"]) == 0
    assert main(["fit", str(run), "--mu", "2"]) == 0
    capsys.readouterr()
    assert main(["interpret", "--trust-model", str(run), str(data), "--top-k", "4", "--tile-size", "8", "--no-progress"]) == 0
    out = capsys.readouterr().out
    folder = run / "interpretation"
    assert f"interpretations -> {folder}" in out
    assert str(folder / "000-cat.png") in out and (folder / "000-cat.png").is_file()
    loaded = load_interpretations(run)
    assert [i.class_name for i in loaded] == ["cat", "dog"]
    assert all(f.average.shape == (3, 8, 8) and f.count == 4 for i in loaded for f in i.features)

    assert main(["interpret", "--trust-model", str(tmp_path / "missing"), str(data)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vebi: error:") and len(err.strip().splitlines()) == 1
    assert main(["interpret", "--trust-model", str(run), str(data), "--class", "cow", "--no-progress"]) == 2
    assert "unknown class 'cow'" in capsys.readouterr().err
