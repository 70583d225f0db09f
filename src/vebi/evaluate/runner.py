"""The whole evaluation of one run: every explanation method and the ablation experiments.

:func:`evaluate_run` takes a run folder (``vebi collect`` + ``vebi fit``: model, statistics,
relevance) and an image folder with the same class sub-folders (the test split), optionally a
folder of ground-truth masks mirroring it (``MASKS/<class>/<stem>.png``, 8-bit: a pixel is inside
when its value is > 127; a 0/1 mask file counts its non-zero pixels), and computes

- per method, on every image and for the *predicted* class (the true class where the model
  predicts an output outside the run's classes, see :class:`vebi.classes.ClassMap`): the heatmap (B, H, W) in [0, 1];
  with masks, the IoU sweep, pointing game and mass in mask (:mod:`vebi.evaluate.metrics`) on the
  correctly and the wrongly classified images separately (and on all of them); without masks,
  only the mask-free score below;
- per method, deletion and insertion curves and their AUCs (:mod:`vebi.evaluate.faithfulness`,
  baseline image "zero" for both);
- ablation (:func:`vebi.evaluate.ablation.ablation_study`): per class its positive-weight and
  negative-weight relevant sets, each as a whole (every k = 0..n with ``ablation_curves``), against
  layer-matched random sets of channels relevant to no class (``ablation_seeds`` seeds from
  ``seed``), and the reference set of the last layer's channels with the most classifier evidence;
  the class's own accuracy and the other classes'; and the union of all relevant features against
  layer-matched random sets of its size;
- sanity checks (:mod:`vebi.evaluate.sanity`, ``sanity``): the cascading randomisation test of
  every method's map on ``sanity_images`` images (a seeded class-balanced choice), and with
  ``random_label_weights`` (weights of the run's architecture trained on permuted labels) the
  data randomisation test.

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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from vebi.core.relevance import positions
from vebi.hooks import preserve_model
from vebi.errors import VebiError
from vebi.evaluate.ablation import AblationResult, UnionAblationResult, ablation_study, union_ablation
from vebi.evaluate.faithfulness import DeletionInsertion, FaithfulnessResult
from vebi.evaluate.metrics import DEFAULT_THRESHOLDS, Localization, LocalizationResult
from vebi.evaluate.sanity import SanityResult
from vebi.models import model_device

__all__ = ["EvaluationResult", "MethodScores", "default_methods", "evaluate_run", "resolve_split"]

SUBSETS = ("correct", "wrong", "all")
# decoded images and masks kept in memory after the first pass over them, for the other passes
# (methods, ablation); more than this and every pass reads the files again
KEEP_BYTES = 1 << 30
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
    sanity: tuple[SanityResult, ...] = ()
    timings: dict[str, float] = field(default_factory=dict, compare=False)
    per_image: tuple[dict[str, Any], ...] = field(default=(), compare=False)

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
            "sanity": [s.to_dict() for s in self.sanity],
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


def _load_mask(path: Path, size: int | None, shape: tuple[int, int], resize: int | None = None) -> Tensor:
    """Mask file -> bool (H, W), resized (nearest) and centre-cropped like its image when ``size``."""
    from torchvision import transforms

    try:
        with Image.open(path) as img:
            mask = img.convert("L")
    except (UnidentifiedImageError, OSError) as exc:
        raise VebiError(f"cannot read mask {path}: {exc}") from None
    if size is not None:
        mask = transforms.CenterCrop(size)(transforms.Resize(resize or size, transforms.InterpolationMode.NEAREST)(mask))
    array = np.asarray(mask)
    if tuple(array.shape) != tuple(shape):
        raise VebiError(f"mask {path} is {array.shape[1]}x{array.shape[0]} but its image is {shape[1]}x{shape[0]}")
    inside = array > 127 if array.max() > 1 else array != 0
    return torch.from_numpy(inside.copy())


class _Subset(Dataset):
    """(image, label, index[, mask]) of the chosen images of an ImageFolder."""

    def __init__(self, dataset: Any, indices: Sequence[int], mask_files: Sequence[Path] | None,
                 size: int | None, resize: int | None = None) -> None:
        self.dataset, self.indices, self.mask_files, self.size = dataset, list(indices), mask_files, size
        self.resize = resize

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple:
        image, label = self.dataset[self.indices[i]][:2]
        if self.mask_files is None:
            return image, label, i
        return image, label, i, _load_mask(self.mask_files[i], self.size, tuple(image.shape[-2:]), self.resize)


def _batch_bytes(batch: Sequence[Any]) -> int:
    return sum(t.numel() * t.element_size() for t in batch if isinstance(t, Tensor))


def _rebatched(batches: Sequence[Sequence[Any]], size: int) -> list[tuple[Tensor, Tensor]]:
    """(images, labels) batches of ``size`` (the last one shorter) from loaded batches, in order: the
    batches a ``DataLoader(..., batch_size=size, shuffle=False)`` over the same images would give."""
    images = torch.cat([b[0] for b in batches])
    labels = torch.cat([torch.as_tensor(b[1]) for b in batches])
    return [(images[i:i + size], labels[i:i + size]) for i in range(0, len(images), size)]


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


def _method_overrides(options: Mapping[str, Mapping[str, Any]] | None,
                      chosen: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``options`` checked against the evaluated methods and their declared options."""
    from vebi.methods.registry import check_options

    out: dict[str, dict[str, Any]] = {}
    for name, values in (options or {}).items():
        if name not in chosen:
            raise VebiError(f"options given for method {name!r}, which is not evaluated "
                            f"(evaluated: {', '.join(chosen) or 'none'})")
        check_options(name, dict(values))
        out[name] = dict(values)
    return out


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
    method_options: Mapping[str, Mapping[str, Any]] | None = None,
    thresholds: Sequence[float] | None = None,
    max_images: int | None = None,
    seed: int = 0,
    num_features: int = 3,
    steps: int = 20,
    faithfulness_images: int | None = None,
    batch_size: int = 32,
    cam_layer: str | None = None,
    ablation: bool = True,
    ablation_seeds: int = 5,
    max_ablation_features: int | None = None,
    ablation_curves: bool = False,
    ablation_batch: int | None = None,
    split: str = "test",
    sanity: bool = False,
    sanity_images: int = 16,
    random_label_weights: str | Path | None = None,
    model: nn.Module | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    trust_model: bool = False,
) -> EvaluationResult:
    """Evaluate every method and the ablation experiments on ``data`` (see the module docstring).

    ``methods``: None for :func:`default_methods`, an empty sequence for none (only the ablation).
    ``method_options``: per evaluated method, options that replace its defaults (e.g.
    ``{"integrated_gradients": {"steps": 16}}``); recorded in the settings.
    ``faithfulness_images``: deletion/insertion curves on a seeded class-balanced subset of this many
    of the evaluated images (default: all; the two curves cost 2 ``steps`` image forwards per image
    and map, most of an evaluation's time).
    ``model``: the run's network (default: rebuilt from ``run.json``), moved to ``device`` (default:
    where its parameters are, else the CPU). ``data``/``masks`` may be an an8Flower root or a folder
    with ``<split>/`` sub-folders; the ``split`` folder is used then. ``sanity`` (off by default: on
    the demo's network and 16 images it costs more than the rest of a 24-image evaluation) needs at
    least one method; ``random_label_weights`` adds the data randomisation test to it. ``trust_model``: rebuild a
    model spec that is neither torchvision's nor vebi's own (:func:`vebi.run.check_trusted`).
    """
    from vebi.methods import build_method, method_names, method_options as declared_options
    from vebi.methods.cam import default_cam_layer
    from vebi.run import Run, resolve_device

    start = time.perf_counter()
    if num_features < 1 or steps < 1 or batch_size < 1 or ablation_seeds < 1:
        raise VebiError("num_features, steps, batch_size and ablation_seeds must be at least 1")
    if sanity and sanity_images < 1:
        raise VebiError(f"sanity_images must be at least 1, got {sanity_images}")
    if random_label_weights is not None and not Path(random_label_weights).is_file():
        raise VebiError(f"random-label weights {random_label_weights} not found")
    if faithfulness_images is not None and faithfulness_images < 1:
        raise VebiError(f"faithfulness_images must be at least 1, got {faithfulness_images}")
    if max_ablation_features is not None and max_ablation_features < 0:
        raise VebiError(f"max_ablation_features must be >= 0, got {max_ablation_features}")
    if ablation_batch is not None and ablation_batch < 1:
        raise VebiError(f"ablation_batch must be at least 1, got {ablation_batch}")
    chosen = tuple(dict.fromkeys(methods)) if methods is not None else default_methods()
    unknown = [m for m in chosen if m not in method_names()]
    if unknown:
        raise VebiError(f"unknown method(s) {', '.join(map(repr, unknown))}; choose from {', '.join(method_names())}")
    overrides = _method_overrides(method_options, chosen)
    thresholds = tuple(float(t) for t in (DEFAULT_THRESHOLDS if thresholds is None else thresholds))
    Localization(thresholds)  # validates the sweep before any work

    run = Run.open(run_dir)
    info = run.info
    relevance = run.relevance
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
    subset = _Subset(dataset, indices, mask_files, size, run.data.get("resize"))
    loader = DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=0)
    num_classes = len(relevance.class_names)
    outputs = tuple(relevance.output(j) for j in range(num_classes))
    timings: dict[str, float] = {}

    # predictions once: correctness decides which Localization an image goes to
    predictions: list[Tensor] = []
    labels: list[Tensor] = []
    first_batch: Tensor | None = None
    kept: list[Any] | None = []
    kept_bytes = 0
    with preserve_model(model, freeze=False, no_inplace=False), torch.no_grad():
        for batch in tqdm(loader, desc="predict", unit="batch", disable=not progress):
            if kept is not None:
                kept_bytes += _batch_bytes(batch)
                if kept_bytes > KEEP_BYTES:
                    kept = None
                else:
                    kept.append(batch)
            x = batch[0].to(dev)
            first_batch = x if first_batch is None else first_batch
            logits = model(x)
            if logits.dim() != 2 or logits.shape[1] <= max(outputs):
                raise VebiError(f"the model returns {tuple(logits.shape)} scores, but the run's classes are "
                                f"outputs up to {max(outputs)}")
            predictions.append(logits.argmax(dim=1).cpu())
            labels.append(torch.as_tensor(batch[1]))
    predicted, truth = torch.cat(predictions), torch.cat(labels)
    faithful = torch.zeros(len(indices), dtype=torch.bool)
    faithful[_balanced_subset(truth.tolist(), faithfulness_images, seed)] = True
    correct_mask = positions(predicted, outputs) == truth
    # explained output: the prediction, or the true class's output where the prediction is no run class
    explained = torch.where(positions(predicted, outputs) >= 0, predicted, torch.tensor(outputs)[truth])
    per_class = [float(correct_mask[truth == c].double().mean()) if bool((truth == c).any()) else float("nan")
                 for c in range(num_classes)]
    uses_cam = any("layer" in declared_options(m) for m in chosen)
    if cam_layer is None and first_batch is not None and uses_cam:
        cam_layer = default_cam_layer(model, first_batch)

    built = [build_method(name, relevance, strict=False, **{"num_features": num_features, "layer": cam_layer,
                                                             **overrides.get(name, {})})
             for name in chosen]
    names = [n for method in built for n in method.output_names()]
    localization = {n: {"correct": Localization(thresholds), "wrong": Localization(thresholds)} for n in names}
    faithfulness = {n: DeletionInsertion(steps) for n in names}
    blank = dict.fromkeys(names, 0)
    # batch-outer: each batch is loaded once and every method scores it; times are per method
    for method in built:
        timings[method.name] = 0.0
    overall = tqdm(total=len(loader), desc=f"evaluate {len(built)} methods", unit="batch", disable=not progress)
    offset = 0
    for batch in kept if kept is not None else loader:
        images = batch[0].to(dev)
        b = images.shape[0]
        target = explained[offset:offset + b].to(dev)
        ok = correct_mask[offset:offset + b]
        scored = faithful[offset:offset + b]
        offset += b
        every, on_curves = bool(scored.all()), scored.to(dev)
        curve_images, curve_target = (images, target) if every else (images[on_curves], target[on_curves])
        ends = None  # the curves' endpoints: the same for every map of the batch, scored once
        for method in built:
            began = time.perf_counter()
            for name, maps in method.evaluation_maps(model, images, target).items():
                maps = maps.detach().float().cpu()
                blank[name] += int((maps.flatten(1).amax(dim=1) <= maps.flatten(1).amin(dim=1)).sum())
                if mask_files is not None:
                    m = batch[3]
                    for subset_name, rows in (("correct", ok), ("wrong", ~ok)):
                        if bool(rows.any()):
                            localization[name][subset_name].update(maps[rows], m[rows])
                if bool(scored.any()):
                    if ends is None:
                        ends = faithfulness[name].endpoints(model, curve_images, curve_target)
                    heat = maps.to(dev) if every else maps.to(dev)[on_curves]
                    faithfulness[name].update(model, curve_images, heat, curve_target, endpoints=ends)
            timings[method.name] += time.perf_counter() - began
        overall.update()
    overall.close()

    scores = []
    per_image: list[dict[str, Any]] = []
    files = [str(Path(dataset.samples[i][0]).relative_to(images_root)) for i in indices]
    for name in names:
        results: dict[str, LocalizationResult | None] = dict.fromkeys(SUBSETS)
        if mask_files is not None:
            acc = localization[name]
            for subset_name in ("correct", "wrong"):
                if acc[subset_name].count:
                    results[subset_name] = acc[subset_name].compute()
            results["all"] = acc["correct"].merge(acc["wrong"]).compute()
            per_image += _per_image_rows(name, acc, results["correct"], correct_mask, files, truth, predicted)
        scores.append(MethodScores(name, results["correct"], results["wrong"], results["all"],
                                   faithfulness[name].compute(), blank[name]))

    ranked = [relevance.relevant(j) for j in range(num_classes)]
    seeds = tuple(range(int(seed), int(seed) + int(ablation_seeds)))
    study = union = None
    if ablation:
        ablation_batch_size = max(batch_size, 64)
        ablation_loader = (_rebatched(kept, ablation_batch_size) if kept is not None else
                           DataLoader(_Subset(dataset, indices, None, size), batch_size=ablation_batch_size,
                                      shuffle=False, num_workers=0))
        began = time.perf_counter()
        study = ablation_study(model, ablation_loader, relevance, seeds=seeds, max_features=max_ablation_features,
                               curves=ablation_curves, max_batch=ablation_batch, outputs=outputs,
                               progress=progress)
        if any(ranked):
            union = union_ablation(model, ablation_loader, relevance, seeds=seeds, max_batch=ablation_batch,
                                   outputs=outputs, progress=progress)
        timings["ablation"] = time.perf_counter() - began
    checks = _sanity_checks(run, model, dataset, built, sanity_images, seed, random_label_weights, batch_size,
                            progress) if sanity and built else ()
    if checks:
        timings["sanity"] = sum(c.seconds for c in checks)
    timings["total"] = time.perf_counter() - start

    settings = {
        "methods": list(chosen), "method_options": overrides, "thresholds": list(thresholds), "seed": int(seed),
        "max_images": max_images,
        "num_features": num_features, "steps": steps,
        "faithfulness_images": int(faithful.sum()), "deletion_baseline": "zero", "insertion_baseline": "zero",
        "cam_layer": cam_layer, "batch_size": batch_size, "ablation": ablation, "ablation_seeds": list(seeds),
        "max_ablation_features": max_ablation_features, "ablation_curves": ablation_curves,
        "ablation_controls": "per seed, the set's per-layer channel counts drawn from channels relevant to no class",
        "ablation_reference": "the positive set's count of last-layer channels with the highest mean "
                              "sum(A * dz_j/dA) over the class's images", "confidence": 0.95,
        "explained_class": "predicted (the true class where the prediction is none of the run's classes)",
        "outputs": list(outputs),
        "mu": relevance.mu, "response": relevance.response, "layers": list(relevance.space.layers),
        "mask_rule": "8-bit mask: value > 127 is inside (0/1 masks: non-zero)", "empty_iou": 1.0,
        "sanity": bool(checks), "sanity_images": sanity_images if checks else None,
        "random_label_weights": None if random_label_weights is None else str(random_label_weights),
    }
    return EvaluationResult(
        run=str(run.root), data=str(images_root), masks=None if masks_root is None else str(masks_root),
        class_names=tuple(relevance.class_names),
        images=len(indices), correct=int(correct_mask.sum()), accuracy=float(correct_mask.double().mean()),
        class_accuracy=tuple(per_class), network=_network_info(info["model"]), settings=settings,
        methods=tuple(scores), ablation=study, union_ablation=union,
        relevant_counts=tuple(len(r) for r in ranked), sanity=tuple(c.result for c in checks), timings=timings,
        per_image=tuple(per_image),
    )


@dataclass(frozen=True)
class _Timed:
    result: SanityResult
    seconds: float


def _sanity_checks(run: Any, model: nn.Module, dataset: Any, methods: Sequence[Any], images: int, seed: int,
                   random_label_weights: str | Path | None, batch_size: int, progress: bool) -> tuple[_Timed, ...]:
    """The cascading test (and the data test with ``random_label_weights``) on a seeded class-balanced
    choice of ``images`` images."""
    from vebi.evaluate.sanity import cascading_randomisation, data_randomisation
    from vebi.models import load_model

    chosen = _balanced_subset(dataset.targets, images, seed)
    x = torch.stack([dataset[i][0] for i in chosen]).to(model_device(model))
    out = []
    began = time.perf_counter()
    cascade = cascading_randomisation(model, x, methods, seed=seed, batch_size=batch_size, progress=progress)
    out.append(_Timed(cascade, time.perf_counter() - began))
    if random_label_weights is not None:
        began = time.perf_counter()
        spec = run.info["model"]
        other = load_model(spec["spec"], str(random_label_weights), spec.get("args")).to(model_device(model))
        out.append(_Timed(data_randomisation(model, other, x, methods, batch_size=batch_size),
                          time.perf_counter() - began))
    return tuple(out)


def _per_image_rows(name: str, acc: dict[str, Localization], correct: LocalizationResult | None, ok: Tensor,
                    files: Sequence[str], truth: Tensor, predicted: Tensor) -> list[dict[str, Any]]:
    """One row per image of method ``name``: IoU averaged over thresholds and at the method's best
    threshold on the correctly classified images, pointing hit, mass in mask (paired comparisons
    between methods use these)."""
    rows = []
    best = None if correct is None else correct.iou.thresholds.index(correct.iou.best_threshold)
    for subset, members in (("correct", torch.nonzero(ok).flatten()), ("wrong", torch.nonzero(~ok).flatten())):
        loc = acc[subset]
        if not loc.count:
            continue
        iou, hits, mass = loc.iou.per_image(), loc.pointing.per_image(), loc.mass.per_image()
        for r, i in enumerate(members.tolist()):
            rows.append({"method": name, "image": files[i], "subset": subset, "label": int(truth[i]),
                         "predicted": int(predicted[i]), "iou_mean": float(iou[r].mean()),
                         "iou_best_threshold": None if best is None else float(iou[r, best]),
                         "pointing": float(hits[r]), "mass_in_mask": float(mass[r])})
    return rows
