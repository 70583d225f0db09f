"""Class maps: model outputs <-> class folders and names, in every command (issue 13)."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vebi.classes import ClassMap, data_warnings
from vebi.cli import main
from vebi.data import load_image
from vebi.errors import VebiError
from vebi.explanation.result import load_explanation
from vebi.methods import build_method, method_names
from vebi.pipeline import explain_files
from vebi.run import Run

COLOURS = {"blue": (0, 0, 255), "green": (0, 255, 0), "red": (255, 0, 0)}

PERMUTED_NET = '''
import torch
from torch import nn
from order import OUTPUT_CHANNELS  # a module beside this file


def net():
    """Mean colour per channel; output o is channel OUTPUT_CHANNELS[o] (red, blue, green)."""
    conv = nn.Conv2d(3, 3, 1, bias=False)
    head = nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
        head.weight.copy_(torch.eye(3)[list(OUTPUT_CHANNELS)] * 10)
    return nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)
'''

WIDE_NET = '''
import torch
from torch import nn
from widths import OUTPUTS


def net():
    """A small random CNN with OUTPUTS outputs; output 500 wins on every image."""
    torch.manual_seed(0)
    head = nn.Linear(6, OUTPUTS)
    with torch.no_grad():
        head.bias[500] = 50.0
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, stride=2, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)
'''


def _colour_folder(root: Path, per_class: int = 3, size: int = 8) -> Path:
    rng = np.random.default_rng(0)
    for name, rgb in COLOURS.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.clip(np.array(rgb) * 0.8 + rng.integers(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{name}{i}.png")
    return root


def test_class_map_sources_and_targets(tmp_path):
    lines = tmp_path / "names.txt"
    lines.write_text("red\nblue\ngreen\n")
    cmap = ClassMap.resolve(["blue", "green", "red"], classes=lines)
    assert cmap.outputs == (1, 2, 0) and cmap.names == ("blue", "green", "red")
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps({"blue": 7, "green": 3, "243": 9}))
    cmap = ClassMap.resolve(["243", "blue", "green"], classes=mapping)
    assert cmap.outputs == (9, 7, 3)
    assert ClassMap.from_dict(json.loads(json.dumps(cmap.to_dict()))) == cmap
    # one target, one meaning: a number is an output; name:/index: say which
    assert cmap.output("blue") == 7 and cmap.output(3) == 3 and cmap.output("index:243") == 243
    assert cmap.output("name:243") == 9 and cmap.output("9") == 9
    with pytest.raises(VebiError, match="index:243 or name:243"):
        cmap.output("243")
    with pytest.raises(VebiError, match="unknown class 'violet'"):
        cmap.output("violet")
    assert cmap.to_classes(torch.tensor([3, 9, 5, 7])).tolist() == [2, 0, -1, 1]
    # torchvision-style categories; folders that name no output are one error naming them
    categories = [f"cat{i}" for i in range(10)]
    assert ClassMap.resolve(["cat4", "Cat2"], categories=categories).outputs == (4, 2)
    with pytest.raises(VebiError, match="owl, yak"):
        ClassMap.resolve(["cat1", "owl", "yak"], categories=categories)
    assert ClassMap.resolve(["12", "5"]).outputs == (12, 5)  # folders named by output index
    assert ClassMap.resolve(["b", "a"]).outputs == (0, 1)  # no source: ImageFolder order
    # ImageNet-1k WNIDs: output o is the o-th WNID in sorted order (tench 0, goldfish 1, toilet tissue 999)
    wnids = ClassMap.resolve(["n15075141", "n01440764", "n01443537"], categories=categories)
    assert wnids.outputs == (999, 0, 1) and wnids.source == "ImageNet WNIDs"
    with pytest.raises(VebiError, match="n00000001 are WNIDs of no ImageNet-1k class"):
        ClassMap.resolve(["n01440764", "n00000001"])
    warned = data_warnings([2, 30], ["a", "b"], top_k=10)
    assert "a (2)" in warned[0] and "top-K 10" in warned[1]
    assert data_warnings([30, 30], ["a", "b"], top_k=10) == []


def test_permuted_outputs_with_classes_file_and_sibling_module(tmp_path, capsys):
    data = _colour_folder(tmp_path / "photos")
    code = tmp_path / "code"
    code.mkdir()
    (code / "order.py").write_text("OUTPUT_CHANNELS = (0, 2, 1)  # outputs: red, blue, green\n")
    (code / "permuted.py").write_text(PERMUTED_NET)
    names = tmp_path / "names.txt"
    names.write_text("red\nblue\ngreen\n")
    spec = f"{code / 'permuted.py'}:net"
    before = list(sys.path)
    assert main(["collect", spec, str(data), "-o", str(tmp_path / "plain"), "--top-k", "2"]) == 0
    assert sys.path == before  # the factory's folder was on sys.path only while importing
    captured = capsys.readouterr()
    assert "accuracy 0.000" in captured.out and "--classes" in captured.err
    assert main(["collect", spec, str(data), "-o", str(tmp_path / "run"), "--top-k", "2", "--classes",
                 str(names)]) == 0
    captured = capsys.readouterr()
    assert "accuracy 1.000" in captured.out and "--classes" not in captured.err
    run = Run.open(tmp_path / "run")
    assert run.info["classes"]["outputs"] == [1, 2, 0]
    assert main(["fit", str(tmp_path / "run"), "--mu", "1", "--no-progress"]) == 0
    done = explain_files(tmp_path / "run", [data / "red" / "red0.png", data / "blue" / "blue0.png"], device="cpu",
                         trust_model=True)
    for file, output in zip(done, (0, 1), strict=True):
        e = file.explanation
        assert e.predicted == output and e.predicted_name == file.path.parent.name
        assert e.target == e.predicted and e.target_name == e.predicted_name
    assert main(["evaluate", "--trust-model", str(tmp_path / "run"), str(data), "-m", "grad_cam", "--steps", "2",
                 "--no-ablation", "--no-progress"]) == 0
    results = json.loads((tmp_path / "run" / "evaluation" / "results.json").read_text())
    assert results["accuracy"] == 1.0 and results["class_accuracy"] == [1.0, 1.0, 1.0]


def test_weights_name_not_in_cache_is_one_clear_error(tmp_path, monkeypatch):
    from vebi.models import load_model

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(VebiError, match="not in torch's cache") as info:
        load_model("torchvision:mobilenet_v2", "IMAGENET1K_V1")
    assert "mobilenet_v2-b0353104.pth" in str(info.value) and str(tmp_path / "torch" / "hub" / "checkpoints") in str(
        info.value)
    with pytest.raises(VebiError, match="IMAGENET1K_V1, IMAGENET1K_V2"):
        load_model("torchvision:mobilenet_v2", "IMAGENET9")


@pytest.fixture(scope="module")
def wide_run(tmp_path_factory):
    """A 1000-output model (from a file importing a module beside it) over folders of 3 of its outputs."""
    root = tmp_path_factory.mktemp("wide")
    data = _colour_folder(root / "photos", per_class=3)
    (data / "red").rename(data / "2")  # a class whose name is a number
    (root / "widths.py").write_text("OUTPUTS = 1000\n")
    (root / "wide.py").write_text(WIDE_NET)
    mapping = root / "classes.json"
    mapping.write_text(json.dumps({"2": 5, "blue": 3, "green": 999}))
    run = root / "run"
    assert main(["collect", f"{root / 'wide.py'}:net", str(data), "-o", str(run), "--top-k", "2", "--classes",
                 str(mapping)]) == 0
    assert main(["fit", str(run), "--mu", "1", "--no-progress"]) == 0
    return run, data


def test_subset_of_a_1000_output_model_runs_every_command(wide_run, tmp_path, capsys):
    run, data = wide_run
    assert Run.open(run).relevance.weights.shape[1] == 3
    assert Run.open(run).relevance.outputs == (5, 3, 999)
    assert main(["interpret", "--trust-model", str(run), str(data), "--top-k", "2", "--tile-size", "8"]) == 0
    image = data / "blue" / "blue0.png"
    capsys.readouterr()
    # the prediction (output 500) is none of the run's classes: one line, and a baseline still explains it
    assert main(["explain", "--trust-model", str(run), str(image)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "output 500" in err and "none of the run's classes" in err
    assert main(["explain", "--trust-model", str(run), str(image), "-m", "grad_cam", "-o", str(tmp_path / "gc")]) == 0
    e = load_explanation(tmp_path / "gc" / "blue0")
    assert e.predicted == 500 and e.target == 500 and e.predicted_name == "500"
    assert main(["explain", "--trust-model", str(run), str(image), "--target", "blue"]) == 0
    e = load_explanation(run / "explanations" / "blue0")
    assert (e.target, e.target_name, e.predicted) == (3, "blue", 500) and e.features
    assert main(["evaluate", "--trust-model", str(run), str(data), "-m", "vebi", "-m", "grad_cam", "--steps", "2",
                 "--ablation-seeds", "1", "--max-ablation-features", "1", "--no-progress"]) == 0
    results = json.loads((run / "evaluation" / "results.json").read_text())
    assert results["accuracy"] == 0.0 and results["settings"]["outputs"] == [5, 3, 999]
    assert main(["report", str(run)]) == 0
    assert (run / "report" / "index.html").is_file()
    # predicted labels: the highest-scoring of the run's outputs
    assert main(["collect", str(Run.open(run).info["model"]["spec"]), str(data), "-o", str(tmp_path / "pred"),
                 "--top-k", "2", "--labels", "predicted", "--classes", str(run.parent / "classes.json")]) == 0


def test_target_name_index_and_numeric_name_explain_the_same_output(wide_run, tmp_path):
    run, data = wide_run
    image = data / "2" / "red0.png"
    r = Run.open(run)
    model, classes = r.model(trust=True), r.classes
    x = r.transform()(load_image(image))[None]
    with torch.no_grad():
        probs = model(x).softmax(dim=1)[0]
    targets = ["name:2", "5", "index:5", 5]  # as --target gives them (strings), and an int
    for method in method_names():
        built = build_method(method, r.relevance, strict=False)
        explained = built.explain(model, x.expand(len(targets), -1, -1, -1), targets, classes)
        assert [(e.target, e.target_name) for e in explained] == [(5, "2")] * 4, method
        for e in explained:
            assert e.target_score == pytest.approx(float(probs[5]), rel=1e-5, abs=1e-7), method
            assert (e.predicted, e.predicted_name) == (500, "500")
            assert e.score == pytest.approx(float(probs[500]), rel=1e-5)
        torch.testing.assert_close(explained[0].combined, explained[3].combined)
    (done,) = explain_files(run, [image], target="name:2", out=tmp_path / "cli", device="cpu", trust_model=True)
    assert (done.explanation.target, done.explanation.target_name) == (5, "2")
    with pytest.raises(VebiError, match="index:2 or name:2"):
        explain_files(run, [image], target="2", out=tmp_path / "x", device="cpu", trust_model=True)
