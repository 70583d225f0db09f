"""Explainer on a hand-weighted model with hand-computed numbers and maps, batch independence on
torchvision models, scoping, saving, interpretation links, the method protocol and the CLI."""

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from vebi.methods import build_method
from vebi.cli import main
from vebi.errors import VebiError
from vebi.explanation.explainer import Explainer
from vebi.explanation.result import load_explanation
from vebi.core.features import FeatureSpace
from vebi.layers import capture_outputs
from vebi.layers import default_layers
from vebi.core.relevance import Relevance
from conftest import torchvision_model

FACTORY = "conftest:tiny_cnn"


def hand_model() -> nn.Module:
    """Input channel c -> feature c (1x1 identity conv), ReLU, global average, identity classifier."""
    conv, head = nn.Conv2d(2, 2, 1, bias=False), nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(2).view(2, 2, 1, 1))
        head.weight.copy_(torch.eye(2))
    return nn.Sequential(conv, nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)


def hand_relevance(weights=((1.0, -1.0), (0.5, 2.0))) -> Relevance:
    return Relevance(torch.tensor(weights, dtype=torch.float64), FeatureSpace(("1",), (2,)), ("a", "b"), 10.0)


# channel 0 = [1, -1, 3] -> ReLU [1, 0, 3] (energy 10); channel 1 = [0, 2, 1] (energy 5)
IMAGE = torch.tensor([[[[1.0, -1.0, 3.0]], [[0.0, 2.0, 1.0]]]])
X = (2 / math.sqrt(5), 1 / math.sqrt(5))  # (10, 5) -> L1 (2/3, 1/3) -> L2 (2, 1)/sqrt(5)
P_A = 1 / (1 + math.exp(-1 / 3))  # logits (4/3, 1): the average of each ReLU map


def test_contributions_order_shares_and_heatmaps_hand_computed():
    (e,) = Explainer(hand_model(), hand_relevance())(IMAGE)
    assert (e.predicted, e.predicted_name, e.target, e.target_name) == (0, "a", 0, "a")
    assert e.score == pytest.approx(P_A) and e.target_score == pytest.approx(P_A)
    # r = x o w_a = (2/sqrt5 * 1, 1/sqrt5 * 0.5): shares 0.8 and 0.2
    assert [(f.rank, f.index, f.layer, f.channel) for f in e.features] == [(0, 0, "1", 0), (1, 1, "1", 1)]
    assert [f.response for f in e.features] == pytest.approx(X)
    assert [f.weight for f in e.features] == [1.0, 0.5]
    assert [f.contribution for f in e.features] == pytest.approx([X[0], 0.5 * X[1]])
    assert [f.share for f in e.features] == pytest.approx([0.8, 0.2])
    # seed = the channel's own map; guided ReLU passes it; identity conv; min-max
    assert e.features[0].heatmap.flatten().tolist() == pytest.approx([1 / 3, 0, 1])
    assert e.features[1].heatmap.flatten().tolist() == pytest.approx([0, 1, 0.5])
    # share-weighted: 0.8 [1/3, 0, 1] + 0.2 [0, 1, 0.5] = [4/15, 1/5, 9/10], min-max -> [2/21, 0, 1]
    assert e.combined.flatten().tolist() == pytest.approx([2 / 21, 0, 1])
    assert e.method == "vebi" and e.settings["stride_fix"] and e.versions["torch"] == torch.__version__
    assert (e.settings["combine"], e.settings["min_share"], e.settings["upsample"]) == ("share", 0.05, "linear")


def test_combinations_max_and_share_with_a_share_floor_hand_computed():
    (paper,) = Explainer(hand_model(), hand_relevance(), combine="max", upsample="nearest")(IMAGE)
    assert paper.combined.flatten().tolist() == pytest.approx([1 / 3, 1, 1])  # max of the two maps
    assert (paper.settings["combine"], paper.settings["min_share"], paper.settings["upsample"]) == ("max", None, "nearest")
    # feature 1 holds 0.2 of the evidence: under a floor of 0.25 it is left out -> minmax(0.8 [1/3, 0, 1])
    (floored,) = Explainer(hand_model(), hand_relevance(), min_share=0.25)(IMAGE)
    assert floored.combined.flatten().tolist() == pytest.approx([1 / 3, 0, 1])
    # the top feature counts even under the floor
    (top,) = Explainer(hand_model(), hand_relevance(), min_share=0.9)(IMAGE)
    assert top.combined.flatten().tolist() == pytest.approx([1 / 3, 0, 1])
    for bad in ({"combine": "mean"}, {"min_share": 1.0}, {"upsample": "cubic"}):
        with pytest.raises(VebiError):
            Explainer(hand_model(), hand_relevance(), **bad)


def test_target_keeps_only_positive_contributions_and_top_k_limits():
    explainer = Explainer(hand_model(), hand_relevance())
    for target in (1, "b", torch.tensor([1])):
        (e,) = explainer(IMAGE, target=target)
        # w_b = (-1, 2): r = (-2/sqrt5, 2/sqrt5), only feature 1 is kept
        assert (e.predicted, e.target, e.target_name) == (0, 1, "b")
        assert e.target_score == pytest.approx(1 - P_A)
        assert [(f.index, f.share) for f in e.features] == [(1, 1.0)]
        assert e.features[0].contribution == pytest.approx(2 * X[1])
        assert e.combined.flatten().tolist() == pytest.approx([0, 1, 0.5])
    (top1,) = Explainer(hand_model(), hand_relevance(), num_features=1)(IMAGE)
    assert [f.index for f in top1.features] == [0] and top1.features[0].share == pytest.approx(0.8)
    first, second = explainer(IMAGE.repeat(2, 1, 1, 1), target=["a", 1])
    assert [f.index for f in first.features] == [0, 1] and [f.index for f in second.features] == [1]


def test_no_positive_contribution_gives_no_features_and_a_zero_map():
    (e,) = Explainer(hand_model(), hand_relevance(((-1.0, 0.0), (-2.0, 0.0))))(IMAGE, target="a")
    assert e.features == () and e.combined.abs().sum() == 0


def test_bad_inputs_raise_clear_errors_and_leave_the_model_as_it_was():
    model = hand_model().train()
    model[0].weight.requires_grad_(True)
    model[4].weight.requires_grad_(False)
    explainer = Explainer(model, hand_relevance())
    with pytest.raises(VebiError, match="unknown class 'c'"):
        explainer(IMAGE, target="c")
    with pytest.raises(VebiError, match="one target per image"):
        explainer(IMAGE, target=[0, 1])
    with pytest.raises(VebiError, match="float tensor"):
        explainer(IMAGE[0])
    with pytest.raises(VebiError, match="num_features"):
        Explainer(model, hand_relevance(), num_features=0)
    image = IMAGE.clone()
    explainer(image)
    assert torch.equal(image, IMAGE) and not image.requires_grad
    assert all(m.training for m in model.modules())
    assert model[0].weight.requires_grad and not model[4].weight.requires_grad
    assert model[1].inplace and all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert torch._C._len_torch_function_stack() == 0


def test_save_and_load_round_trip(tmp_path):
    (e,) = Explainer(hand_model(), hand_relevance())(IMAGE)
    numbers, maps = e.save(tmp_path / "one")
    assert numbers.name == "one.json" and maps.name == "one.safetensors"
    back = load_explanation(tmp_path / "one.json")
    assert back.to_dict() == e.to_dict()
    assert torch.equal(back.combined, e.combined)
    assert all(torch.equal(a.heatmap, b.heatmap) for a, b in zip(back.features, e.features, strict=True))
    assert json.loads(numbers.read_text())["features"][1]["share"] == pytest.approx(0.2)


def test_interpretation_images_are_linked(tmp_path):
    from vebi.interpretation.crops import FeatureInterpretation, Interpretation
    from vebi.interpretation.store import save_interpretations

    def feature(index: int, value: float) -> FeatureInterpretation:
        return FeatureInterpretation(index, "1", index, 1.0, (1, 1), torch.full((3, 4, 4), value),
                                     torch.zeros(0, 3, 4, 4), (0,))

    save_interpretations([Interpretation(0, "a", (feature(0, 0.2), feature(1, 0.8)))], tmp_path)
    (e,) = Explainer(hand_model(), hand_relevance(), interpretation_dir=tmp_path)(IMAGE)
    links = [f.interpretation for f in e.features]
    assert all(links) and links[0] != links[1]
    with Image.open(links[1]) as picture:
        assert picture.getpixel((0, 0)) == (204, 204, 204)  # 0.8 * 255
    other = Relevance(torch.ones(4, 2, dtype=torch.float64), FeatureSpace(("0",), (4,)), ("a", "b"), 10.0)
    with pytest.raises(VebiError, match="other features"):
        Explainer(hand_model(), other, interpretation_dir=tmp_path)


def test_method_protocol_returns_the_combined_maps():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.ReLU(), nn.Conv2d(4, 5, 3), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 2)).eval()
    relevance = Relevance(torch.rand(9, 2, dtype=torch.float64), FeatureSpace(("1", "3"), (4, 5)), ("a", "b"), 10.0)
    images, target = torch.rand(3, 3, 17, 17), torch.tensor([0, 1, 1])
    fixed = build_method("vebi", relevance)(model, images, target)
    unfixed = build_method("vebi_nofix", relevance)(model, images, target)
    assert fixed.shape == (3, 17, 17) and fixed.min() >= 0 and fixed.max() == 1
    explanations = Explainer(model, relevance)(images, target)
    assert torch.equal(fixed, torch.stack([e.combined for e in explanations]))
    assert not torch.allclose(fixed, unfixed)
    with pytest.raises(VebiError, match="needs a relevance"):
        build_method("vebi")


# ------------------------------------------------------------------------------ torchvision models

@pytest.mark.parametrize("name", ["vgg11", "resnet18", "mobilenet_v2"])
def test_torchvision_models_batch_of_four_equals_one_at_a_time(name):
    torch.manual_seed(0)
    # float64: in float32 the batch size changes the CPU kernels' accumulation order, and a guided
    # ReLU's gate [x > 0] can flip on an activation within rounding of 0, so batch and single maps
    # may differ by far more than eps; in float64 they agree to the final float32 rounding.
    model = torchvision_model(name, 4).eval().double()
    images = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    layers = default_layers(model)
    with torch.no_grad(), capture_outputs(model, layers) as acts:
        plain = model(images).float().softmax(dim=1)
    space = FeatureSpace(tuple(layers), tuple(acts[n].shape[1] for n in layers))
    gen = torch.Generator().manual_seed(2)
    weights = torch.rand(space.size, 4, generator=gen, dtype=torch.float64)
    weights *= torch.rand(space.size, 4, generator=gen) < 0.1
    # x is L1-normalised within each layer: scale w by the layer's width so deep layers compete too
    weights *= torch.tensor([c for c in space.channels for _ in range(c)], dtype=torch.float64)[:, None]
    relevance = Relevance(weights, space, ("a", "b", "c", "d"), 10.0)
    explainer = Explainer(model, relevance)
    batch = explainer(images)
    used = {f.layer for e in batch for f in e.features}
    assert len(used) > 1, used  # seeds of different layers share one backward pass
    for b, e in enumerate(batch):
        assert e.predicted == int(plain[b].argmax()) and e.score == pytest.approx(float(plain[b].max()), rel=1e-6)
        (single,) = explainer(images[b:b + 1])
        assert [(f.index, f.rank) for f in single.features] == [(f.index, f.rank) for f in e.features]
        assert len(e.features) == 3 and e.combined.max() == 1
        assert [f.contribution for f in single.features] == pytest.approx([f.contribution for f in e.features])
        for one, many in zip(single.features, e.features, strict=True):
            torch.testing.assert_close(one.heatmap, many.heatmap, rtol=0, atol=1e-6)  # maps are float32 in [0, 1]
        torch.testing.assert_close(single.combined, e.combined, rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------ CLI

@pytest.fixture
def fitted_run(make_folder, tmp_path):
    data = make_folder(classes=3, per_class=4, size=12)
    run = tmp_path / "run"
    assert main(["collect", FACTORY, str(data), "-o", str(run), "--top-k", "3", "-b", "6"]) == 0
    assert main(["fit", str(run), "--mu", "2"]) == 0
    assert main(["interpret", "--trust-model", str(run), str(data), "--top-k", "3", "--tile-size", "8", "--no-progress"]) == 0
    return run, data


def images_shape(path: Path) -> tuple[int, int]:
    with Image.open(path) as img:
        return (img.height, img.width)


def test_cli_writes_panel_and_json_matching_the_api(fitted_run, tmp_path, capsys):
    from conftest import tiny_cnn
    from vebi.io.artifacts import load_relevance
    from vebi.data import image_transform, load_image

    run, data = fitted_run
    images = [data / "class0" / "img0.png", data / "class2" / "img0.png"]
    out = tmp_path / "out"
    assert main(["explain", "--trust-model", str(run), *map(str, images), "-o", str(out), "--device", "cpu"]) == 0
    assert "-> " in capsys.readouterr().out
    assert {p.name for p in out.iterdir()} == {"images"} | {f"{stem}.{ext}" for stem in ("img0", "img0-1")
                                                            for ext in ("png", "json", "safetensors")}
    with Image.open(out / "img0.png") as panel:
        assert panel.width > 300
    record = json.loads((out / "img0-1.json").read_text())
    # the explained file is copied into the output folder and named relative to the JSON
    assert (out / record["image"]).read_bytes() == images[1].read_bytes() and not Path(record["image"]).is_absolute()
    assert record["source"] == "class2/img0.png" and record["method"] == "vebi"
    expected = Explainer(tiny_cnn(), load_relevance(run))(image_transform()(load_image(images[1]))[None])[0]
    assert record["predicted"] == expected.predicted and record["score"] == pytest.approx(expected.score)
    assert [(f["layer"], f["channel"]) for f in record["features"]] == [(f.layer, f.channel) for f in expected.features]
    assert [f["contribution"] for f in record["features"]] == pytest.approx([f.contribution for f in expected.features])
    assert all(f["interpretation"] and f["interpretation"].endswith(".png") for f in record["features"])
    saved = load_explanation(out / "img0-1.json")  # the CLI writes what Explanation.save writes
    assert saved.to_dict() == {k: v for k, v in record.items() if k != "tensors_sha256"} and saved.combined.shape == images_shape(images[1])

    assert main(["explain", "--trust-model", str(run), str(images[0]), "-o", str(out), "--method", "grad_cam", "--target", "class1"]) == 0
    baseline = json.loads((out / "img0.json").read_text())
    assert (baseline["method"], baseline["target_name"], baseline["features"]) == ("grad_cam", "class1", [])


def test_cli_writes_into_the_run_by_default_where_the_report_finds_it(fitted_run):
    from vebi.report import collect_run

    run, data = fitted_run
    image = str(data / "class1" / "img0.png")
    assert main(["explain", "--trust-model", str(run), image]) == 0
    assert main(["explain", "--trust-model", str(run), image, "--method", "grad_cam"]) == 0
    assert (run / "explanations" / "img0.json").is_file()
    assert json.loads((run / "explanations" / "grad_cam" / "img0.json").read_text())["method"] == "grad_cam"
    views = collect_run(run).explanations
    # one group: the copy of the image inside the run, shared by both methods
    assert [(v.image.read_bytes(), v.name, v.true_class, v.method) for v in views] == [
        (Path(image).read_bytes(), "class1/img0.png", "class1", "vebi")]
    assert views[0].image.resolve().is_relative_to(run.resolve())
    assert [name for name, _ in views[0].baselines] == ["grad_cam"]


@pytest.mark.parametrize("case", ["method", "image", "target", "run"])
def test_cli_bad_input_gives_one_line(case, fitted_run, tmp_path, capsys):
    run, data = fitted_run
    args = ["explain", "--trust-model", str(run), str(data / "class0" / "img0.png"), "-o", str(tmp_path / "o")]
    expect = {"method": "unknown explanation method 'nope'", "image": "cannot read image", "target": "unknown class 'cow'",
              "run": "not found"}[case]
    if case == "method":
        args += ["--method", "nope"]
    elif case == "image":
        bad = tmp_path / "bad.png"
        bad.write_bytes(b"not a png")
        args[3] = str(bad)
    elif case == "target":
        args += ["--target", "cow"]
    else:
        args[2] = str(tmp_path / "missing")
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert expect in err and len(err.splitlines()) == 1 and "Traceback" not in err
