"""The whole evaluation of one run: every explanation method and the ablation experiments.

:func:`evaluate_run` takes a run folder (``vebi collect`` + ``vebi fit``: model, statistics,
relevance) and an image folder with the same class sub-folders (the test split), optionally a
folder of ground-truth masks mirroring it (``MASKS/<class>/<stem>.png``, 8-bit: a pixel is inside
when its value is > 127; a 0/1 mask file counts its non-zero pixels), and computes

- per method, on every image and for the *predicted* class: the heatmap (B, H, W) in [0, 1];
  with masks, the IoU sweep, pointing game and mass in mask (:mod:`vebi.evaluate.metrics`) on the
  correctly and the wrongly classified images separately (and on all of them); without masks,
  only the mask-free score below;
- per method, deletion and insertion curves and their AUCs (:mod:`vebi.evaluate.faithfulness`,
  baseline image "zero" for both);
- ablation (:mod:`vebi.evaluate.ablation`): for each class its relevant features in |weight|
  order, k = 0..n of them, against k random features (one draw per seed, ``ablation_seeds``
  seeds from ``seed``) and the k features of highest mean response on the collected data; and the
  union of all relevant features against random sets of its size.

Methods: ``vebi`` (the combined map), ``vebi_feature1`` .. ``vebi_feature<k>`` (the heatmap of
the image's r-th contributing feature alone, from the same pass; an all-zero map where fewer than
r features contribute), ``vebi_nofix`` (without the stride fix) and every baseline of
:mod:`vebi.methods`, each built by name with the shared options ``num_features`` and ``layer`` where it
declares them. The CAM layer is resolved once (:func:`vebi.methods.cam.default_cam_layer` unless
given) and used by every method with a ``layer`` option; ``activation_map`` keeps ``num_features``
features, like vebi.

``max_images`` keeps a seeded, class-balanced subset (classes take turns, each in a random order
from ``seed``); every other step is deterministic, so the same seed gives the same numbers.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from vebi.hooks import preserve_model
from vebi.errors import VebiError
from vebi.evaluate.ablation import AblationResult, UnionAblationResult, ablation_curves, union_ablation
from vebi.evaluate.faithfulness import DeletionInsertion, FaithfulnessResult
from vebi.evaluate.metrics import DEFAULT_THRESHOLDS, Localization, LocalizationResult
from vebi.models import model_device

__all__ = ["EvaluationResult", "MethodScores", "default_methods", "evaluate_run", "resolve_split"]

SUBSETS = ("correct", "wrong", "all")
MASK_SUFFIXES = (".png", ".bmp", ".gif", ".tif", ".tiff", ".jpg", ".jpeg", ".webp")


@dataclass(frozen=True)
class MethodScores:
    """One method's scores: mask-based (None without masks, or for an empty subset) and faithfulness.

    ``blank`` counts images whose heatmap is all zeros (no contributing feature, constant map).
    """

    name: str
    correct: LocalizationResult | None
    wrong: LocalizationResult | None
    all: LocalizationResult | None
    faithfulness: FaithfulnessResult
    blank: int

    def localization(self, subset: str) -> LocalizationResult | None:
        return {"correct": self.correct, "wrong": self.wrong, "all": self.all}[subset]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "blank_maps": self.blank}
        for subset in SUBSETS:
            result = self.localization(subset)
            out[subset] = None if result is None else result.to_dict()
        out["faithfulness"] = self.faithfulness.to_dict()
        return out

    def summary_row(self) -> dict[str, Any]:
        """Headline numbers: IoU / pointing / mass on the correctly classified images, AUCs on all."""
        row: dict[str, Any] = {"method": self.name}
        loc = self.correct
        row.update({
            "iou_mean": None if loc is None else loc.iou.mean_over_thresholds.mean,
            "iou_low": None if loc is None else loc.iou.mean_over_thresholds.low,
            "iou_high": None if loc is None else loc.iou.mean_over_thresholds.high,
            "best_threshold": None if loc is None else loc.iou.best_threshold,
            "best_iou": None if loc is None else loc.iou.best.mean,
            "pointing": None if loc is None else loc.pointing.mean,
            "mass_in_mask": None if loc is None else loc.mass_in_mask.mean,
            "iou_mean_wrong": None if self.wrong is None else self.wrong.iou.mean_over_thresholds.mean,
        })
        f = self.faithfulness
        row.update({"deletion_auc": f.deletion_auc.mean, "deletion_auc_low": f.deletion_auc.low,
                    "deletion_auc_high": f.deletion_auc.high, "insertion_auc": f.insertion_auc.mean,
                    "insertion_auc_low": f.insertion_auc.low, "insertion_auc_high": f.insertion_auc.high,
                    "blank_maps": self.blank})
        return row


@dataclass(frozen=True)
class EvaluationResult:
    """Everything :func:`evaluate_run` measured (``to_dict`` is what ``results.json`` holds)."""

    run: str
    data: str
    masks: str | None
    class_names: tuple[str, ...]
    images: int
    correct: int
    accuracy: float
    class_accuracy: tuple[float, ...]
    network: dict[str, Any]
    settings: dict[str, Any]
    methods: tuple[MethodScores, ...]
    ablation: AblationResult | None
    union_ablation: UnionAblationResult | None
    relevant_counts: tuple[int, ...]
    timings: dict[str, float] = field(default_factory=dict, compare=False)

    def method(self, name: str) -> MethodScores:
        for m in self.methods:
            if m.name == name:
                return m
        raise VebiError(f"no method {name!r} was evaluated; evaluated: {', '.join(m.name for m in self.methods)}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready numbers (timings are left out, so equal runs give equal files)."""
        return {
            "schema": 1,
            "format": "vebi-evaluation",
            "run": self.run,
            "data": self.data,
            "masks": self.masks,
            "class_names": list(self.class_names),
            "images": self.images,
            "correct": self.correct,
            "wrong": self.images - self.correct,
            "accuracy": self.accuracy,
            "class_accuracy": list(self.class_accuracy),
            "network": dict(self.network),
            "settings": dict(self.settings),
            "relevant_counts": list(self.relevant_counts),
            "summary": [m.summary_row() for m in self.methods],
            "methods": {m.name: m.to_dict() for m in self.methods},
            "ablation": None if self.ablation is None else self.ablation.to_dict(),
            "union_ablation": None if self.union_ablation is None else self.union_ablation.to_dict(),
        }


# ----------------------------------------------------------------------------- data


def resolve_split(data: str | Path, split: str = "test") -> Path:
    """The image folder to evaluate: ``DATA/images/<split>`` (an an8Flower root), ``DATA/<split>``,
    or ``DATA`` itself (one sub-folder per class)."""
    root = Path(data)
    if not root.is_dir():
        raise VebiError(f"data folder {root} not found" if not root.exists() else f"{root} is not a folder")
    for candidate in (root / "images" / split, root / split):
        if candidate.is_dir():
            return candidate
    return root


def _resolve_masks(masks: str | Path, images_root: Path, split: str) -> Path:
    root = Path(masks)
    if not root.is_dir():
        raise VebiError(f"mask folder {root} not found" if not root.exists() else f"mask path {root} is not a folder")
    for candidate in (root / "masks" / split, root / split):
        if candidate.is_dir() and candidate.resolve() != images_root.resolve():
            return candidate
    return root


def _mask_file(masks_root: Path, relative: Path) -> Path | None:
    exact = masks_root / relative
    if exact.is_file():
        return exact
    for suffix in MASK_SUFFIXES:
        other = (masks_root / relative).with_suffix(suffix)
        if other.is_file():
            return other
    return None


def _load_mask(path: Path, size: int | None, shape: tuple[int, int]) -> Tensor:
    """Mask file -> bool (H, W), resized (nearest) and centre-cropped like its image when ``size``."""
    from torchvision import transforms

    try:
        with Image.open(path) as img:
            mask = img.convert("L")
    except (UnidentifiedImageError, OSError) as exc:
        raise VebiError(f"cannot read mask {path}: {exc}") from None
    if size is not None:
        mask = transforms.CenterCrop(size)(transforms.Resize(size, transforms.InterpolationMode.NEAREST)(mask))
    array = np.asarray(mask)
    if tuple(array.shape) != tuple(shape):
        raise VebiError(f"mask {path} is {array.shape[1]}x{array.shape[0]} but its image is {shape[1]}x{shape[0]}")
    inside = array > 127 if array.max() > 1 else array != 0
    return torch.from_numpy(inside.copy())


class _Subset(Dataset):
    """(image, label, index[, mask]) of the chosen images of an ImageFolder."""

    def __init__(self, dataset: Any, indices: Sequence[int], mask_files: Sequence[Path] | None,
                 size: int | None) -> None:
        self.dataset, self.indices, self.mask_files, self.size = dataset, list(indices), mask_files, size

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple:
        image, label = self.dataset[self.indices[i]][:2]
        if self.mask_files is None:
            return image, label, i
        return image, label, i, _load_mask(self.mask_files[i], self.size, tuple(image.shape[-2:]))


def _balanced_subset(labels: Sequence[int], max_images: int | None, seed: int) -> list[int]:
    """All indices, or ``max_images`` of them: classes take turns, each in a seeded random order."""
    n = len(labels)
    if max_images is None or max_images >= n:
        return list(range(n))
    if max_images < 1:
        raise VebiError(f"max_images must be at least 1, got {max_images}")
    generator = torch.Generator().manual_seed(int(seed))
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(int(label), []).append(i)
    queues = {c: [members[k] for k in torch.randperm(len(members), generator=generator).tolist()]
              for c, members in sorted(by_class.items())}
    chosen: list[int] = []
    while len(chosen) < max_images:
        for c in sorted(queues):
            if queues[c] and len(chosen) < max_images:
                chosen.append(queues[c].pop(0))
    return sorted(chosen)


# ----------------------------------------------------------------------------- methods


def default_methods() -> tuple[str, ...]:
    """Every registered method (vebi's own first)."""
    from vebi.methods import method_names

    return method_names()


def _network_info(model_info: dict[str, Any]) -> dict[str, Any]:
    """Accuracies recorded by ``vebi train`` in the model.json beside the weights, when there is one."""
    weights = model_info.get("weights")
    if not weights:
        return {}
    path = Path(weights).parent / "model.json"
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    keys = ("test_accuracy", "train_accuracy", "train_images", "test_images", "model_args", "train")
    return {k: info[k] for k in keys if k in info} if isinstance(info, dict) else {}


def evaluate_run(
    run_dir: str | Path,
    data: str | Path,
    *,
    masks: str | Path | None = None,
    methods: Sequence[str] | None = None,
    thresholds: Sequence[float] | None = None,
    max_images: int | None = None,
    seed: int = 0,
    num_features: int = 3,
    steps: int = 20,
    batch_size: int = 32,
    cam_layer: str | None = None,
    ablation: bool = True,
    ablation_seeds: int = 3,
    max_ablation_features: int | None = None,
    split: str = "test",
    model: nn.Module | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    trust_model: bool = False,
) -> EvaluationResult:
    """Evaluate every method and the ablation experiments on ``data`` (see the module docstring).

    ``methods``: None for :func:`default_methods`, an empty sequence for none (only the ablation).
    ``model``: the run's network (default: rebuilt from ``run.json``), moved to ``device`` (default:
    where its parameters are, else the CPU). ``data``/``masks`` may be an an8Flower root or a folder
    with ``<split>/`` sub-folders; the ``split`` folder is used then. ``trust_model``: rebuild a
    model spec that is neither torchvision's nor vebi's own (:func:`vebi.run.check_trusted`).
    """
    from vebi.methods import build_method, method_names, method_options
    from vebi.methods.cam import default_cam_layer
    from vebi.run import Run, resolve_device

    start = time.perf_counter()
    if num_features < 1 or steps < 1 or batch_size < 1 or ablation_seeds < 1:
        raise VebiError("num_features, steps, batch_size and ablation_seeds must be at least 1")
    if max_ablation_features is not None and max_ablation_features < 0:
        raise VebiError(f"max_ablation_features must be >= 0, got {max_ablation_features}")
    chosen = tuple(dict.fromkeys(methods)) if methods is not None else default_methods()
    unknown = [m for m in chosen if m not in method_names()]
    if unknown:
        raise VebiError(f"unknown method(s) {', '.join(map(repr, unknown))}; choose from {', '.join(method_names())}")
    thresholds = tuple(float(t) for t in (DEFAULT_THRESHOLDS if thresholds is None else thresholds))
    Localization(thresholds)  # validates the sweep before any work

    run = Run.open(run_dir)
    info = run.info
    relevance, stats = run.relevance, run.stats
    if model is None:
        model = run.model(trust=trust_model)
    dev = resolve_device(device) if device is not None else model_device(model)
    model = model.to(dev)

    images_root = resolve_split(data, split)
    dataset = run.dataset(images_root, with_index=False)
    if not dataset.samples:
        raise VebiError(f"{images_root} holds no images")
    run.check_classes(dataset, images_root)
    indices = _balanced_subset(dataset.targets, max_images, seed)
    size = run.data.get("size")

    mask_files: list[Path] | None = None
    masks_root: Path | None = None
    if masks is not None:
        masks_root = _resolve_masks(masks, images_root, split)
        found = [_mask_file(masks_root, Path(dataset.samples[i][0]).relative_to(images_root)) for i in indices]
        missing = [Path(dataset.samples[i][0]).relative_to(images_root) for i, f in zip(indices, found) if f is None]
        if missing:
            raise VebiError(f"{len(missing)} of {len(indices)} images have no mask in {masks_root} "
                            f"(e.g. {missing[0]}); the mask folder must mirror {images_root}")
        mask_files = [f for f in found if f is not None]
    subset = _Subset(dataset, indices, mask_files, size)
    loader = DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=0)
    num_classes = len(relevance.class_names)
    timings: dict[str, float] = {}

    # predictions once: correctness decides which Localization an image goes to
    predictions: list[Tensor] = []
    labels: list[Tensor] = []
    first_batch: Tensor | None = None
    with preserve_model(model, freeze=False, no_inplace=False), torch.no_grad():
        for batch in tqdm(loader, desc="predict", unit="batch", disable=not progress):
            x = batch[0].to(dev)
            first_batch = x if first_batch is None else first_batch
            logits = model(x)
            if logits.dim() != 2 or logits.shape[1] != num_classes:
                raise VebiError(f"the model returns {tuple(logits.shape)} scores for {num_classes} classes")
            predictions.append(logits.argmax(dim=1).cpu())
            labels.append(torch.as_tensor(batch[1]))
    predicted, truth = torch.cat(predictions), torch.cat(labels)
    correct_mask = predicted == truth
    per_class = [float(correct_mask[truth == c].double().mean()) if bool((truth == c).any()) else float("nan")
                 for c in range(num_classes)]
    uses_cam = any("layer" in method_options(m) for m in chosen)
    if cam_layer is None and first_batch is not None and uses_cam:
        cam_layer = default_cam_layer(model, first_batch)

    built = [build_method(name, relevance, strict=False, num_features=num_features, layer=cam_layer) for name in chosen]
    names = [n for method in built for n in method.output_names()]
    localization = {n: {"correct": Localization(thresholds), "wrong": Localization(thresholds)} for n in names}
    faithfulness = {n: DeletionInsertion(steps) for n in names}
    blank = dict.fromkeys(names, 0)
    for method in built:
        label = method.name
        began = time.perf_counter()
        offset = 0
        for batch in tqdm(loader, desc=label, unit="batch", disable=not progress):
            images = batch[0].to(dev)
            b = images.shape[0]
            target = predicted[offset:offset + b]
            ok = correct_mask[offset:offset + b]
            offset += b
            for name, maps in method.evaluation_maps(model, images, target.to(dev)).items():
                maps = maps.detach().float().cpu()
                blank[name] += int((maps.flatten(1).amax(dim=1) <= maps.flatten(1).amin(dim=1)).sum())
                if mask_files is not None:
                    m = batch[3]
                    for subset_name, rows in (("correct", ok), ("wrong", ~ok)):
                        if bool(rows.any()):
                            localization[name][subset_name].update(maps[rows], m[rows])
                faithfulness[name].update(model, images, maps.to(dev), target.to(dev))
        timings[label] = time.perf_counter() - began

    scores = []
    for name in names:
        results: dict[str, LocalizationResult | None] = dict.fromkeys(SUBSETS)
        if mask_files is not None:
            acc = localization[name]
            for subset_name in ("correct", "wrong"):
                if acc[subset_name].count:
                    results[subset_name] = acc[subset_name].compute()
            results["all"] = acc["correct"].merge(acc["wrong"]).compute()
        scores.append(MethodScores(name, results["correct"], results["wrong"], results["all"],
                                   faithfulness[name].compute(), blank[name]))

    ranked = [relevance.relevant(j) for j in range(num_classes)]
    seeds = tuple(range(int(seed), int(seed) + int(ablation_seeds)))
    curves = union = None
    if ablation:
        ablation_loader = DataLoader(_Subset(dataset, indices, None, size), batch_size=max(batch_size, 64),
                                     shuffle=False, num_workers=0)
        began = time.perf_counter()
        curves = ablation_curves(model, ablation_loader, ranked, relevance.space, mean_response=stats.mean_response(),
                                 max_features=max_ablation_features, seeds=seeds, class_names=relevance.class_names,
                                 progress=progress)
        if any(ranked):
            union = union_ablation(model, ablation_loader, ranked, relevance.space, seeds=seeds,
                                   class_names=relevance.class_names, progress=progress)
        timings["ablation"] = time.perf_counter() - began
    timings["total"] = time.perf_counter() - start

    settings = {
        "methods": list(chosen), "thresholds": list(thresholds), "seed": int(seed), "max_images": max_images,
        "num_features": num_features, "steps": steps, "deletion_baseline": "zero", "insertion_baseline": "zero",
        "cam_layer": cam_layer, "batch_size": batch_size, "ablation": ablation, "ablation_seeds": list(seeds),
        "max_ablation_features": max_ablation_features, "confidence": 0.95, "explained_class": "predicted",
        "mu": relevance.mu, "response": relevance.response, "layers": list(relevance.space.layers),
        "mask_rule": "8-bit mask: value > 127 is inside (0/1 masks: non-zero)", "empty_iou": 1.0,
    }
    return EvaluationResult(
        run=str(run), data=str(images_root), masks=None if masks_root is None else str(masks_root),
        class_names=tuple(relevance.class_names),
        images=len(indices), correct=int(correct_mask.sum()), accuracy=float(correct_mask.double().mean()),
        class_accuracy=tuple(per_class), network=_network_info(info["model"]), settings=settings,
        methods=tuple(scores), ablation=curves, union_ablation=union,
        relevant_counts=tuple(len(r) for r in ranked), timings=timings,
    )
