"""A tiny but complete run folder for the report tests (and scripts/screenshot_report.py).

Statistics come from a real ``collect`` of a seeded tiny CNN over generated images; the
relevance has hand-set weights (so counts are known); interpretations (``vebi.interpretation.crops``) and
explanations (``vebi.explanation.explainer``, ``vebi.methods``) are real; evaluation files are written here
in the format ``vebi.report.collect_run`` documents, with small generated PNGs.
"""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

from conftest import tiny_cnn
from vebi.io.artifacts import save_relevance, save_run_info, save_stats
from vebi.methods import build_method
from vebi.core.collect import collect
from vebi.data import image_folder, image_transform, load_image
from vebi.explanation.explainer import Explainer
from vebi.interpretation.crops import interpret
from vebi.interpretation.store import save_interpretations
from vebi.core.relevance import Relevance

LAYERS = ("1", "4")  # the two ReLUs of tiny_cnn: 4 + 6 channels, m = 10
# (feature index, class index, weight); features 0-3 are layer "1", 4-9 layer "4"
WEIGHTS = ((1, 0, 0.5), (7, 0, -0.2), (8, 0, 0.1), (3, 1, 0.9), (7, 1, 0.3))
EXPECTED_COUNTS = (3, 2, 0)  # relevant features per class
EXPECTED_SIGNS = ((2, 1), (2, 0), (0, 0))  # (positive, negative) per class
EXPECTED_LAYER_RELEVANT = (2, 2)  # union {1, 3, 7, 8}: two in each layer


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def make_images(root: Path, class_dirs: Sequence[str], per_class: int = 4, size: int = 16, seed: int = 0) -> Path:
    """Class folders of random RGB images, each class with its own dominant colour channel."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(class_dirs):
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = rng.integers(0, 120, (size, size, 3), dtype=np.uint8)
            arr[..., c % 3] += 120
            _png(d / f"img{i}.png", arr)
    return root


def build_run(root: Path, class_dirs: Sequence[str] = ("cat", "dog", "owl"), *, names: Sequence[str] | None = None,
              relevance: bool = True, interpretation: bool = True, explanations: bool = True, evaluation: bool = True,
              masks: bool = True, explained_name: str = "img0.png") -> Path:
    """Write data under ``root/data`` and the run under ``root/run``; return the run folder.

    ``names`` replaces the class names (default: the folder names, sorted as ImageFolder does).
    """
    data = make_images(root / "data", class_dirs)
    first = sorted(class_dirs)[0]
    (data / first / "img0.png").rename(data / first / explained_name)
    run = root / "run"
    model = tiny_cnn(num_classes=len(class_dirs))
    dataset = image_folder(data, with_index=False)
    loader = torch.utils.data.DataLoader(dataset, batch_size=5, shuffle=False)
    stats = collect(model, loader, layers=list(LAYERS), top_k=4, class_names=list(names or dataset.classes),
                    progress=False)
    weights = torch.zeros(stats.space.size, len(dataset.classes), dtype=torch.float64)
    for f, j, w in WEIGHTS:
        weights[f, j] = w
    fit = Relevance(weights, stats.space, stats.class_names, 5.0, stats.response, 1e-10)
    save_stats(stats, run, model)
    save_run_info(run, {"model": {"spec": "tests/conftest.py:tiny_cnn", "weights": None, "args": {}},
                        "data": {"path": str(data.resolve()), "size": None, "channels": 3, "mean": None, "std": None},
                        "layers": list(LAYERS)})
    if relevance:
        save_relevance(fit, run)
    if relevance and interpretation:
        results = interpret(fit, stats, dataset, model=model, top_k=4, size=16, keep_crops=3, progress=False)
        save_interpretations(results, run, {"top_k": 4, "size": 16})
    if relevance and explanations:
        _write_explanations(run, data, fit, model)
    if evaluation:
        _write_evaluation(run, masks)
    return run


def _write_explanations(run: Path, data: Path, relevance: Relevance, model: torch.nn.Module) -> None:
    """The first image of the first two classes: vebi's explanation (JSON + maps, as ``vebi explain``
    and ``Explanation.save`` write them), Grad-CAM's map in ``grad_cam/`` and a panel-only record."""
    folder = run / "explanations"
    classes = sorted(p.name for p in data.iterdir())
    paths = [sorted((data / c).iterdir())[0] for c in classes[:2]]
    batch = torch.stack([image_transform()(load_image(p)) for p in paths])
    explanations = Explainer(model, relevance, num_features=3, interpretation_dir=run)(batch)
    grad_cam = build_method("grad_cam", relevance)(model, batch, torch.tensor([e.target for e in explanations]))
    rng = np.random.default_rng(1)
    for n, (path, e) in enumerate(zip(paths, explanations, strict=True)):
        stem = f"{n:03d}"
        numbers, _ = e.save(folder / stem)
        copy = folder / "images" / path.parent.name / path.name  # as `vebi explain` keeps the file in the run
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, copy)
        image = f"images/{path.parent.name}/{path.name}"
        record = {**json.loads(numbers.read_text()), "image": image}
        numbers.write_text(json.dumps(record), encoding="utf-8")
        base = {**{k: record[k] for k in ("schema", "predicted", "predicted_name", "score", "target",
                                          "target_name", "target_score")}, "image": f"../{image}"}
        (folder / "grad_cam").mkdir(parents=True, exist_ok=True)
        (folder / "grad_cam" / f"{stem}.json").write_text(json.dumps({**base, "method": "grad_cam", "features": []}))
        save_file({"combined": grad_cam[n].contiguous()}, str(folder / "grad_cam" / f"{stem}.safetensors"))
        _png(folder / "gb" / f"{stem}.png", rng.integers(0, 256, (20, 60, 3), dtype=np.uint8))
        (folder / "gb" / f"{stem}.json").write_text(json.dumps({**base, "method": "guided_backprop", "features": [],
                                                               "panel": f"{stem}.png"}))


# The evaluation's numbers, in the keys vebi evaluate writes (results.json "summary" rows, "ablation"):
# vebi ahead of the best baseline (grad_cam) on IoU, behind guided_backprop on deletion AUC.
SUMMARY = ({"method": "vebi", "iou_mean": 0.41234567, "iou_low": 0.35, "iou_high": 0.47, "best_threshold": 0.3,
            "best_iou": 0.52, "deletion_auc": 0.21, "insertion_auc": 0.55},
           {"method": "grad_cam", "iou_mean": 0.35, "iou_low": 0.30, "iou_high": 0.40, "best_threshold": 0.2,
            "best_iou": 0.47, "deletion_auc": 0.25, "insertion_auc": 0.5},
           {"method": "guided_backprop", "iou_mean": 0.12, "iou_low": 0.1, "iou_high": 0.14, "best_threshold": 0.1,
            "best_iou": 0.2, "deletion_auc": 0.18, "insertion_auc": 0.3},
           {"method": "vebi_nofix", "iou_mean": 0.5, "iou_low": 0.45, "iou_high": 0.55, "best_threshold": 0.3,
            "best_iou": 0.6, "deletion_auc": 0.2, "insertion_auc": 0.6})
THRESHOLDS = (0.1, 0.3, 0.5, 0.7, 0.9)
# per class: (accuracy before, after ablating its n positive relevant features, after n layer-matched random
# ones, other classes' accuracy before and after, n); owl has none
ABLATION = ((1.0, 0.5, 0.9, 0.6, 0.55, 3), (0.75, 0.25, 0.7, 0.8, 0.8, 2), (0.5, None, None, 0.9, None, 0))


def _write_evaluation(run: Path, masks: bool) -> None:
    folder = run / "evaluation"
    folder.mkdir(parents=True)
    summary = [{k: v for k, v in row.items() if masks or not k.startswith(("iou", "best"))} for row in SUMMARY]
    rows = [{"class_index": j, "class_name": name, "baseline_class_accuracy": a, "baseline_other_accuracy": o0,
             "positive_features": n, "positive_class_accuracy": b if n else a,
             "positive_control_class_accuracy": r if n else None, "positive_other_accuracy": o1 if n else o0}
            for j, ((a, b, r, o0, o1, n), name) in enumerate(zip(ABLATION, ("cat", "dog", "owl"), strict=True))]
    methods = {row["method"]: {"correct": {"iou": {
        "thresholds": list(THRESHOLDS), "curve": [{"mean": row["iou_mean"] * (1.5 - t)} for t in THRESHOLDS],
        "mean_over_thresholds": {"mean": row["iou_mean"]}}} if masks else None} for row in SUMMARY}
    results = {"schema": 1, "accuracy": 0.625, "correct": 5, "summary": summary, "methods": methods,
               "ablation": {"baseline_class_accuracy": [a for a, *_ in ABLATION],
                            "summary": [*rows, {"class_index": "", "class_name": "mean over classes"}]},
               "union_ablation": {"features": [[0, 1], [0, 3], [1, 3], [1, 4]], "baseline_mca": 0.75,
                                  "ablated_mca": 0.33333, "random_mca": {"mean": 0.7, "low": 0.6, "high": 0.8}}}
    (folder / "results.json").write_text(json.dumps(results), encoding="utf-8")
    tables = {"ablation.csv": [["features", "class accuracy", "mCA"], ["1", "0.5", "0.6666667"]],
              "scores.csv": [["method", "deletion_auc", "insertion_auc"]]
              + [[r["method"], r["deletion_auc"], r["insertion_auc"]] for r in SUMMARY]}
    if masks:
        tables["iou.csv"] = [["method", "iou_mean", "iou_low", "iou_high", "best_threshold", "best_iou"]] + [
            [r[k] for k in ("method", "iou_mean", "iou_low", "iou_high", "best_threshold", "best_iou")]
            for r in SUMMARY]
    for name, rows in tables.items():
        with (folder / name).open("w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows(rows)
    rng = np.random.default_rng(2)
    plots = ["ablation_curves.png", "deletion_curves.png"] + (["iou_vs_threshold.png"] if masks else [])
    for name in plots:
        _png(folder / name, rng.integers(0, 256, (60, 90, 3), dtype=np.uint8))


def expected_images(data, with_plots: int = 2) -> int:
    """<img> elements the page should hold for ``data`` (a ReportData), counted from its parts:
    the summary plots; per relevant feature its tile and, in its pop-up, the average and the crop row;
    per explanation its input, a heatmap and an interpretation per feature, the combined map and
    one image per baseline; the evaluation figures, where the report's own IoU plot (drawn when
    results.json has the curves) replaces the evaluation's IoU-vs-threshold figure."""
    features = [f for c in data.classes for f in c.features]
    tiles = sum(f.average is not None for f in features) * 2 + sum(len(f.crops) for f in features)
    explained = sum(1 + sum(1 + (f.interpretation is not None) for f in e.features) + 1 + len(e.baselines)
                    for e in data.explanations)
    figures = sum(len(g.figures) for g in data.evaluation.groups) if data.evaluation else 0
    return with_plots + tiles + explained + figures  # IoU: one figure replaced by one
