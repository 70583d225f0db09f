"""The evaluation runner and ``vebi evaluate`` on a tiny hand-made an8Flower-like dataset.

Each image is noise below 0.36 with one 8 x 8 square of its class's colour (channel value 0.9);
its mask is that square. A test method "oracle" returns exactly the square (IoU 1 at every
threshold, pointing 1, mass 1) and "blank" an all-zero map (IoU 0, pointing 0, mass 0), so the
runner's bookkeeping can be checked against known numbers.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import tiny_cnn
from vebi.io.artifacts import save_relevance, save_run_info, save_stats
from vebi.methods import METHODS, Method, register_method
from vebi.cli import main
from vebi.core.collect import collect
from vebi.data import image_folder
from vebi.errors import VebiError
from vebi.evaluate.faithfulness import curve_auc, perturbation_curves
from vebi.evaluate.output import format_summary, write_evaluation
from vebi.evaluate.runner import _balanced_subset, default_methods, evaluate_run
from vebi.core.relevance import Relevance

CLASSES = ("blue", "green", "red")  # ImageFolder order; colour channel 2, 1, 0
CHANNEL = {"red": 0, "green": 1, "blue": 2}
SIZE, SQUARE, PER_CLASS = 24, 8, 4
# (feature index, class, weight): layer "1" holds features 0-3, layer "4" features 4-9
WEIGHTS = ((1, 0, 0.5), (7, 0, -0.2), (3, 1, 0.9), (7, 1, 0.3), (8, 1, 0.1), (5, 2, 0.4))
CONFTEST = str(Path(__file__).with_name("conftest.py"))


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def make_dataset(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for name in CLASSES:
            for i in range(PER_CLASS):
                image = rng.integers(0, 92, (SIZE, SIZE, 3), dtype=np.uint8)
                y, x = (int(v) for v in rng.integers(0, SIZE - SQUARE, 2))
                image[y:y + SQUARE, x:x + SQUARE] = 30
                image[y:y + SQUARE, x:x + SQUARE, CHANNEL[name]] = 230
                mask = np.zeros((SIZE, SIZE), np.uint8)
                mask[y:y + SQUARE, x:x + SQUARE] = 255
                _png(root / "images" / split / name / f"{i:06d}.png", image)
                _png(root / "masks" / split / name / f"{i:06d}.png", mask)
    return root


def make_run(root: Path) -> tuple[Path, Path]:
    data = make_dataset(root / "data")
    model = tiny_cnn(num_classes=len(CLASSES))
    train = image_folder(data / "images" / "train", with_index=False)
    loader = torch.utils.data.DataLoader(train, batch_size=5, shuffle=False)
    stats = collect(model, loader, layers=["1", "4"], top_k=4, class_names=train.classes, progress=False)
    weights = torch.zeros(stats.space.size, len(CLASSES), dtype=torch.float64)
    for f, j, w in WEIGHTS:
        weights[f, j] = w
    run = root / "run"
    save_stats(stats, run, model)
    save_relevance(Relevance(weights, stats.space, stats.class_names, 5.0, stats.response, 1e-10), run)
    save_run_info(run, {"model": {"spec": f"{CONFTEST}:tiny_cnn", "weights": None, "args": {}},
                        "data": {"path": str(data / "images" / "train"), "size": None, "channels": 3, "mean": None,
                                 "std": None},
                        "layers": ["1", "4"]})
    return run, data


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("evaluate"))


@pytest.fixture
def test_methods():
    @register_method("oracle")
    @dataclass(frozen=True)
    class Oracle(Method):
        def maps(self, model, images, target):
            return (images.amax(dim=1) > 0.5).float()

    @register_method("blank")
    @dataclass(frozen=True)
    class Blank(Method):
        def maps(self, model, images, target):
            return torch.zeros_like(images[:, 0])

    try:
        yield
    finally:
        METHODS.pop("oracle", None)
        METHODS.pop("blank", None)


def _model_predictions(data: Path) -> tuple[torch.Tensor, torch.Tensor]:
    test = image_folder(data / "images" / "test", with_index=False)
    images = torch.stack([test[i][0] for i in range(len(test))])
    with torch.no_grad():
        predicted = tiny_cnn(num_classes=len(CLASSES))(images).argmax(dim=1)
    return predicted, torch.tensor(test.targets)


def test_runner_scores_every_method_and_the_ablation(tiny, test_methods, tmp_path):
    run, data = tiny
    methods = (*default_methods(), "oracle", "blank")
    result = evaluate_run(run, trust_model=True, data=data, masks=data, methods=methods, thresholds=(0.25, 0.5, 0.75), steps=4,
                          batch_size=5, progress=False)
    predicted, truth = _model_predictions(data)
    n = len(truth)
    correct = int((predicted == truth).sum())
    assert 0 < correct < n  # both subsets are exercised
    assert (result.images, result.correct) == (n, correct)
    assert result.accuracy == pytest.approx(correct / n)
    assert result.data.endswith(str(Path("images") / "test")) and result.masks.endswith(str(Path("masks") / "test"))
    names = [m.name for m in result.methods]
    assert names[:5] == ["vebi", "vebi_feature1", "vebi_feature2", "vebi_feature3", "vebi_nofix"]
    assert {"grad_cam", "grad_cam_plus_plus", "guided_backprop", "deconvnet", "integrated_gradients",
            "activation_map", "oracle", "blank"} <= set(names)
    assert result.settings["cam_layer"] == "4"  # tiny_cnn's last ReLU, resolved once

    oracle, blank = result.method("oracle"), result.method("blank")
    assert (oracle.correct.images, oracle.wrong.images, oracle.all.images) == (correct, n - correct, n)
    for subset in ("correct", "wrong", "all"):
        o, b = oracle.localization(subset), blank.localization(subset)
        assert [e.mean for e in o.iou.curve] == [1.0, 1.0, 1.0]
        assert (o.pointing.mean, o.mass_in_mask.mean, o.iou.best_threshold) == (1.0, 1.0, 0.25)
        assert [e.mean for e in b.iou.curve] == [0.0, 0.0, 0.0]
        assert (b.pointing.mean, b.mass_in_mask.mean) == (0.0, 0.0)
    assert (oracle.blank, blank.blank) == (0, n)
    # deletion of a map that is zero everywhere removes pixels in row-major order; both start at p(x)
    for m in result.methods:
        assert len(m.faithfulness.deletion_curve) == 5 and m.faithfulness.deletion_curve[0].n == n
        assert m.faithfulness.deletion_curve[0].mean == pytest.approx(blank.faithfulness.deletion_curve[0].mean)
        assert 0.0 <= m.faithfulness.deletion_auc.mean <= 1.0

    # per class relevant counts from WEIGHTS: blue (0) 2, green (1) 3, red (2) 1
    assert result.relevant_counts == (2, 3, 1)
    ab = result.ablation
    # positive sets in |weight| order, negative sets apart; the reference: as many channels of layer "4"
    assert [c.positive.features for c in ab.classes] == [(("1", 1),), (("1", 3), ("4", 3), ("4", 4)), (("4", 1),)]
    assert [c.negative.features for c in ab.classes] == [(("4", 3),), (), ()]
    assert [len(c.reference.features) for c in ab.classes] == [1, 3, 1] and ab.reference_layer == "4"
    assert all(layer == "4" for c in ab.classes for layer, _ in c.reference.features)
    relevant = {("1", 1), ("1", 3), ("4", 1), ("4", 3), ("4", 4)}
    for c in ab.classes:  # controls: the same layers, never a relevant channel, 5 seeds by default
        for s in (c.positive, c.negative):
            assert len(s.control_features) == 5 and s.counts == (len(s.features),)
            for draw in s.control_features:
                assert [layer for layer, _ in draw] == [layer for layer, _ in s.features]
                assert not set(draw) & relevant
    per_class = [float((predicted[truth == c] == c).double().mean()) for c in range(len(CLASSES))]
    assert list(ab.baseline_class_accuracy) == pytest.approx(per_class)
    assert ab.baseline_mca == pytest.approx(sum(per_class) / 3)
    assert list(result.class_accuracy) == pytest.approx(per_class)
    assert sorted(result.union_ablation.features) == [("1", 1), ("1", 3), ("4", 1), ("4", 3), ("4", 4)]

    files = write_evaluation(result, tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["schema"] == 1 and saved["accuracy"] == pytest.approx(correct / n)
    assert saved["methods"]["oracle"]["correct"]["iou"]["mean_over_thresholds"]["mean"] == 1.0
    assert saved["methods"]["blank"]["blank_maps"] == n
    assert [row["method"] for row in saved["summary"]] == names
    listed = {e["file"] for e in saved["tables"] + saved["figures"]}
    assert listed == {p.name for p in files} - {"results.json", "timings.json", "per_image.csv"}
    # per-image scores: every image once per method, pairing methods by image; they average to the summary
    with (tmp_path / "out" / "per_image.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    for name in ("vebi", "oracle", "blank"):
        mine = [r for r in rows if r["method"] == name]
        assert len({r["image"] for r in mine}) == len(mine) == n
        ok = [r for r in mine if r["subset"] == "correct"]
        assert len(ok) == correct and all(r["label"] == r["predicted"] for r in ok)
        loc = result.method(name).correct
        assert sum(float(r["iou_mean"]) for r in ok) / correct == pytest.approx(loc.iou.mean_over_thresholds.mean,
                                                                               abs=1e-5)
        assert sum(float(r["iou_best_threshold"]) for r in ok) / correct == pytest.approx(loc.iou.best.mean, abs=1e-5)
        assert sum(float(r["mass_in_mask"]) for r in ok) / correct == pytest.approx(loc.mass_in_mask.mean, abs=1e-5)
    assert {"scores.csv", "iou_summary.csv", "iou_vs_threshold.png", "ablation.png", "ablation_summary.csv",
            "ablation_sets.csv", "ablation_union.csv", "deletion_insertion.png"} <= listed
    assert all((tmp_path / "out" / f).stat().st_size > 0 for f in listed)
    header = (tmp_path / "out" / "iou_curves.csv").read_text().splitlines()[0]
    assert header.startswith("method,subset,threshold,mean")
    table = format_summary(result)
    assert "oracle" in table and "1.000" in table and f"accuracy {correct / n:.4f}" in table

    from vebi.report.collect_run import collect_run

    view = collect_run(run, evaluation_dir=tmp_path / "out").evaluation
    assert view.accuracy == pytest.approx(correct / n)
    assert {g.key for g in view.groups} == {"iou", "scores", "ablation"}  # sanity checks are off by default


def test_faithfulness_on_a_class_balanced_subset_equals_the_curves_of_those_images(tiny, test_methods):
    run, data = tiny
    kw = dict(trust_model=True, data=data, masks=data, methods=["oracle"], steps=3, batch_size=4, ablation=False,
              progress=False)
    whole = evaluate_run(run, **kw)
    part = evaluate_run(run, faithfulness_images=5, **kw)
    # localisation is untouched: every image is still scored
    assert part.method("oracle").all == whole.method("oracle").all
    faith = part.method("oracle").faithfulness
    assert faith.deletion_auc.n == 5 and whole.method("oracle").faithfulness.deletion_auc.n == whole.images
    assert part.settings["faithfulness_images"] == 5 and whole.settings["faithfulness_images"] == whole.images
    # the same curves as scoring those five images (classes in turn) alone
    test = image_folder(data / "images" / "test", with_index=False)
    chosen = _balanced_subset(test.targets, 5, 0)
    images = torch.stack([test[i][0] for i in chosen])
    model = tiny_cnn(num_classes=len(CLASSES))
    with torch.no_grad():
        target = model(images).argmax(dim=1)
    deletion, insertion = perturbation_curves(model, images, (images.amax(dim=1) > 0.5).float(), target, steps=3)
    # other batch compositions: float32 logits summed in another order, probabilities equal to ~1e-7
    assert faith.deletion_auc.mean == pytest.approx(float(curve_auc(deletion).mean()), abs=1e-6)
    assert faith.insertion_auc.mean == pytest.approx(float(curve_auc(insertion).mean()), abs=1e-6)
    with pytest.raises(VebiError, match="faithfulness_images"):
        evaluate_run(run, faithfulness_images=0, **kw)


def test_runner_without_masks_keeps_the_mask_free_scores(tiny):
    run, data = tiny
    result = evaluate_run(run, trust_model=True, data=data / "images" / "test", methods=["grad_cam"], steps=2, max_images=6,
                          ablation=False, progress=False)
    (m,) = result.methods
    assert (m.correct, m.wrong, m.all) == (None, None, None)
    assert m.faithfulness.deletion_auc.n == 6 and result.images == 6
    assert result.ablation is None and result.union_ablation is None
    assert "IoU" not in format_summary(result)


def test_method_options_reach_the_method_and_are_recorded(tiny):
    run, data = tiny
    kw = dict(trust_model=True, data=data, masks=data, methods=["integrated_gradients", "grad_cam"], steps=2,
              max_images=6, ablation=False, progress=False)
    coarse = evaluate_run(run, method_options={"integrated_gradients": {"steps": 1}}, **kw)
    fine = evaluate_run(run, method_options={"integrated_gradients": {"steps": 4}}, **kw)
    assert coarse.settings["method_options"] == {"integrated_gradients": {"steps": 1}}
    # one Gauss-Legendre node (the gradient at the midpoint) gives other maps than four
    ig = [r["iou_mean"] for res in (coarse, fine) for r in res.per_image if r["method"] == "integrated_gradients"]
    assert ig[:6] != ig[6:]
    cam = [r["iou_mean"] for res in (coarse, fine) for r in res.per_image if r["method"] == "grad_cam"]
    assert cam[:6] == cam[6:]
    with pytest.raises(VebiError, match="not evaluated"):
        evaluate_run(run, method_options={"guided_backprop": {}}, **kw)
    with pytest.raises(VebiError, match="has no option sharpness"):
        evaluate_run(run, method_options={"integrated_gradients": {"sharpness": 2}}, **kw)
    with pytest.raises(VebiError, match="option steps of method 'integrated_gradients' takes an integer, got 'many'"):
        evaluate_run(run, method_options={"integrated_gradients": {"steps": "many"}}, **kw)


def test_cli_method_option(tiny, tmp_path, capsys):
    run, data = tiny
    base = ["evaluate", "--trust-model", str(run), str(data), "--masks", str(data), "--methods", "integrated_gradients",
            "--max-images", "3", "--steps", "1", "--no-ablation", "--no-progress"]
    assert main([*base, "--method-option", "integrated_gradients.steps=2", "-o", str(tmp_path / "a")]) == 0
    saved = json.loads((tmp_path / "a" / "results.json").read_text())
    assert saved["settings"]["method_options"] == {"integrated_gradients": {"steps": 2}}
    capsys.readouterr()
    assert "METHOD.OPTION=VALUE" in _error(capsys, [*base, "--method-option", "steps=2"])
    assert "no option" in _error(capsys, [*base, "--method-option", "integrated_gradients.step=2"])

    from vebi.report.collect_run import collect_run

    note = collect_run(run, evaluation_dir=tmp_path / "a").evaluation.settings_note
    assert note == "Settings: deletion/insertion curves in 1 step; integrated_gradients with steps = 2."


def test_balanced_subset_takes_classes_in_turn():
    labels = [0, 0, 0, 0, 1, 1, 2]
    chosen = _balanced_subset(labels, 4, seed=3)
    assert sorted(labels[i] for i in chosen) == [0, 0, 1, 2]
    assert chosen == sorted(chosen) and len(set(chosen)) == 4
    assert _balanced_subset(labels, 4, seed=3) == chosen
    assert _balanced_subset(labels, None, seed=3) == list(range(7))


def test_cli_writes_the_folder_and_is_reproducible(tiny, tmp_path, capsys):
    run, data = tiny
    args = ["evaluate", "--trust-model", str(run), str(data), "--masks", str(data), "--methods", "vebi,grad_cam", "--max-images", "6",
            "--steps", "2", "--thresholds", "0.3,0.6", "--ablation-seeds", "2", "--no-progress", "--seed", "1"]
    assert main([*args, "-o", str(tmp_path / "a")]) == 0
    printed = capsys.readouterr().out
    assert "vebi_feature1" in printed and "grad_cam" in printed and "union of" in printed
    assert main([*args, "-o", str(tmp_path / "b")]) == 0
    first = (tmp_path / "a" / "results.json").read_bytes()
    assert first == (tmp_path / "b" / "results.json").read_bytes()
    saved = json.loads(first)
    assert saved["run"] == str(run) and saved["data"].startswith(str(data)) and saved["masks"].startswith(str(data))
    assert saved["settings"]["thresholds"] == [0.3, 0.6] and saved["settings"]["ablation_seeds"] == [1, 2]
    assert saved["images"] == 6 and set(saved["methods"]) == {"vebi", "vebi_feature1", "vebi_feature2",
                                                               "vebi_feature3", "grad_cam"}


def test_cli_default_output_is_the_run_evaluation_folder(tiny, tmp_path):
    run, data = tiny
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    assert main(["evaluate", "--trust-model", str(copy), str(data), "--methods", "grad_cam", "--max-images", "3", "--steps", "1",
                 "--no-ablation", "--no-progress"]) == 0
    assert json.loads((copy / "evaluation" / "results.json").read_text())["images"] == 3


def test_cli_ablation_only(tiny, tmp_path, capsys):
    run, data = tiny
    out = tmp_path / "ablation"
    assert main(["evaluate", "--trust-model", str(run), str(data), "--methods", "none", "--no-progress", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "mean over classes" in printed and "explanations" not in printed
    saved = json.loads((out / "results.json").read_text())
    assert saved["methods"] == {} and saved["summary"] == []
    assert {e["file"] for e in saved["tables"] + saved["figures"]} == {
        "ablation_summary.csv", "ablation_sets.csv", "ablation.png", "ablation_union.csv"}
    rows = (out / "ablation_summary.csv").read_text().splitlines()
    header, classes, mean = rows[0].split(","), [r.split(",") for r in rows[1:4]], rows[4].split(",")
    assert len(rows) == 5 and mean[1] == "mean over classes"
    for name in ("positive_class_accuracy", "positive_control_class_accuracy", "reference_other_accuracy"):
        column = header.index(name)
        assert float(mean[column]) == pytest.approx(sum(float(r[column]) for r in classes) / 3, abs=1e-5)
    assert len(saved["ablation"]["summary"]) == 4 and saved["settings"]["ablation_curves"] is False

    curves = tmp_path / "curves"
    assert main(["evaluate", "--trust-model", str(run), str(data), "--methods", "none", "--no-progress",
                 "--ablation-curves",
                 "--ablation-seeds", "2", "--ablation-batch", "7", "-o", str(curves)]) == 0
    saved = json.loads((curves / "results.json").read_text())
    green = saved["ablation"]["classes"][1]["positive"]
    assert green["counts"] == [0, 1, 2, 3] and len(green["control_class"][0]["values"]) == 2
    assert "ablation_curves.png" in {e["file"] for e in saved["figures"]}

    from vebi.report.collect_run import collect_run

    assert [g.key for g in collect_run(run, evaluation_dir=out).evaluation.groups] == ["ablation"]


def _error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vebi: error: ") and "Traceback" not in err and "\n" not in err
    return err


def test_cli_errors(tiny, tmp_path, capsys):
    run, data = tiny
    base = ["evaluate", "--trust-model", str(run), str(data / "images" / "test"), "--no-progress", "--methods", "grad_cam"]
    assert "mask folder" in _error(capsys, [*base, "--masks", str(tmp_path / "nowhere")])

    partial = tmp_path / "partial"
    import shutil

    shutil.copytree(data / "masks" / "test", partial)
    (partial / "red" / "000002.png").unlink()
    err = _error(capsys, [*base, "--masks", str(partial)])
    assert "1 of 12 images have no mask" in err and "red/000002.png" in err

    _png(partial / "red" / "000002.png", np.zeros((10, 12), np.uint8))
    assert "is 12x10 but its image is 24x24" in _error(capsys, [*base, "--masks", str(partial)])

    assert "unknown method" in _error(capsys, ["evaluate", "--trust-model", str(run), str(data), "--methods", "nope"])
    assert "nothing to evaluate" in _error(capsys, [*base[:-2], "--methods", "none", "--no-ablation"])
    assert "thresholds" in _error(capsys, [*base, "--thresholds", "0.5,0.2"])
    assert "thresholds" in _error(capsys, [*base, "--thresholds", "half"])
    other = tmp_path / "other"
    (other / "cat").mkdir(parents=True)
    _png(other / "cat" / "a.png", np.zeros((SIZE, SIZE, 3), np.uint8))
    assert "not the run's classes" in _error(capsys, ["evaluate", "--trust-model", str(run), str(other), "--no-progress"])
    assert "run.json" in _error(capsys, ["evaluate", "--trust-model", str(tmp_path), str(data), "--no-progress"])


def test_runner_sanity_checks_are_written_and_reported(tiny, test_methods, tmp_path, capsys):
    run, data = tiny
    weights = tmp_path / "shuffled.pt"
    torch.save(tiny_cnn(num_classes=len(CLASSES), seed=4).state_dict(), weights)
    result = evaluate_run(run, data, methods=["vebi", "grad_cam", "oracle"], steps=2, max_images=6, ablation=False,
                          trust_model=True,
                          sanity=True, sanity_images=6, random_label_weights=weights, progress=False)
    cascade, shuffled = result.sanity
    assert (cascade.kind, shuffled.kind) == ("cascading", "data") and cascade.images == 6
    assert cascade.methods == ("vebi", "grad_cam", "oracle") and cascade.steps == ("7", "3", "0")
    assert all(e.mean == pytest.approx(1.0) for e in cascade.spearman["oracle"] + cascade.ssim["oracle"])
    assert cascade.final("grad_cam")[0].mean < 0.9
    assert result.settings["sanity_images"] == 6 and result.to_dict()["sanity"][1]["steps"] == ["random labels"]

    out = tmp_path / "evaluation"
    write_evaluation(result, out)
    saved = json.loads((out / "results.json").read_text())
    sanity_files = {e["file"] for e in saved["tables"] + saved["figures"] if e["section"] == "sanity"}
    assert sanity_files == {"sanity_cascading.csv", "sanity_cascading.png", "sanity_data.csv", "sanity_data.png"}
    rows = (out / "sanity_cascading.csv").read_text().splitlines()
    assert len(rows) == 1 + 3 * 3 and rows[0].startswith("method,step,randomised_down_to,spearman_mean")
    from vebi.evaluate.output import format_sanity
    from vebi.report.collect_run import collect_run

    assert "oracle" in format_sanity(result) and "cascading" in format_sanity(result)
    assert "sanity" in [g.key for g in collect_run(run, evaluation_dir=out).evaluation.groups]

    assert main(["evaluate", "--trust-model", str(run), str(data), "--methods", "grad_cam", "--max-images", "3",
                 "--steps", "1", "--no-ablation", "--sanity", "--sanity-images", "2", "--no-progress", "-o", str(tmp_path / "on")]) == 0
    assert "sanity check, cascading" in capsys.readouterr().out and (tmp_path / "on" / "sanity_cascading.csv").is_file()


def test_error_bars_of_equal_control_accuracies_are_never_negative():
    """Five equal accuracies: their mean may lie an ulp outside their percentile interval (it did
    for 0.99 and crashed the ablation plot); the bars are clamped at zero."""
    from vebi.evaluate.ablation import Spread
    from vebi.evaluate.output import error_bar

    spreads = [Spread.of([k / 100] * 5) for k in range(1, 100)]
    assert any(s.mean < s.low or s.mean > s.high for s in spreads)  # the case the clamp is for
    for s in spreads:
        down, up = error_bar(s.mean, (s.low, s.high))
        assert 0 <= down <= 1e-15 and 0 <= up <= 1e-15
    assert error_bar(0.5, (0.4, 0.7)) == pytest.approx((0.1, 0.2)) and error_bar(0.5, None) == (0.0, 0.0)


def test_images_are_read_once_and_the_scores_equal_those_of_reading_them_every_pass(tiny, test_methods, monkeypatch):
    """The loaded batches serve the methods and the ablation (re-batched to its batch size) when they fit
    in KEEP_BYTES; with nothing kept every pass reads the files again, with the same results."""
    import vebi.evaluate.runner as runner

    run, data = tiny
    reads = [0]
    original = runner._Subset.__getitem__

    def counted(self, i):
        reads[0] += 1
        return original(self, i)

    monkeypatch.setattr(runner._Subset, "__getitem__", counted)
    kw = dict(trust_model=True, data=data, masks=data, methods=["vebi", "grad_cam", "oracle"], steps=2,
              batch_size=5, progress=False)
    kept = evaluate_run(run, **kw)
    n = kept.images
    assert reads[0] == n
    reads[0] = 0
    monkeypatch.setattr(runner, "KEEP_BYTES", 0)
    again = evaluate_run(run, **kw)
    assert reads[0] >= 3 * n  # predictions, methods, ablation (evidence, accuracies, union)
    assert kept.to_dict() == again.to_dict()
    assert kept.ablation is not None and kept.ablation == again.ablation
