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


def _write_evaluation(run: Path, masks: bool) -> None:
    folder = run / "evaluation"
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"schema": 1, "accuracy": 0.625}), encoding="utf-8")
    tables = {"ablation.csv": [["features", "class accuracy", "mCA"], ["1", "0.5", "0.6666667"]],
              "scores.csv": [["method", "deletion AUC", "insertion AUC"], ["vebi", "0.21", "0.55"]]}
    if masks:
        tables["iou.csv"] = [["method", "mean IoU", "best threshold", "best IoU"],
                             ["vebi", "0.41234567", "0.3", "0.52"], ["gradcam", "0.35", "0.2", "0.47"]]
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
    one image per baseline; the evaluation figures."""
    features = [f for c in data.classes for f in c.features]
    tiles = sum(f.average is not None for f in features) * 2 + sum(len(f.crops) for f in features)
    explained = sum(1 + sum(1 + (f.interpretation is not None) for f in e.features) + 1 + len(e.baselines)
                    for e in data.explanations)
    figures = sum(len(g.figures) for g in data.evaluation.groups) if data.evaluation else 0
    return with_plots + tiles + explained + figures
