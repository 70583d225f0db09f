"""Everything the report shows, read from a run folder into plain frozen dataclasses.

This module is the report's only reader of the run folder; the files and JSON keys below are
the contract with the stages that write them. Paths inside a JSON file are relative to that
file's folder (absolute paths are accepted too). Every JSON file carries ``"schema": 1``.
A missing file or folder leaves its section out; a file that is there but unreadable raises
``VebiError`` naming it; an image that a JSON file names but that is missing is left out with
a warning.

Core (``vebi collect`` / ``vebi fit``; see ``vebi.io.artifacts``)::

    run.json          model.spec, model.weights, data.path                      (optional)
    stats.json        space.layers, space.channels, class_names, response, labels, count,
                      correct, scored, top_k                                    (needed)
    stats.safetensors tensor "class_counts" (C,) -- images per class            (optional)
    relevance.json + relevance.safetensors  (via vebi.io.artifacts.load_relevance) (optional)

Interpretation (``vebi interpret``)::

    interpretation/interpretation.json
      {"schema": 1, "size": S, "top_k": K,
       "classes": [{"index": j, "name": str, "grid": "class_000.png",           grid optional
                    "features": [{"index": i, "layer": str, "channel": c, "weight": w,
                                  "receptive_field": [h, w], "count": n,         optional
                                  "average": "000-cat/000-conv1-c5.png",        the average crop
                                  "crops": "000-cat/000-conv1-c5-crops.png"     top crops in one
                                                                                row image, or a
                                                                                list of images,
                                                                                or null
                                  }, ...]}, ...]}

(this is what ``vebi.interpretation.store.save_interpretations`` writes.)

Explanations (``Explanation.save``, which ``vebi explain`` calls): ``explanations/*.json`` and
``explanations/*/*.json`` (e.g. one sub-folder per baseline), one record per image and method::

    {"schema": 1, "method": "vebi" | baseline name,
     "image": "/path/to/input.png",                optional (vebi explain writes it); groups the
                                                   records of one image; without it, the file stem
     "true_class": str,                            optional; else the image's folder name when
                                                   that is a class name
     "predicted": j, "predicted_name": str, "score": p,
     "target": j, "target_name": str,              explained class (shown when not the predicted)
     "features": [{"rank": k, "index": i, "layer": str, "channel": c, "weight": w,
                   "contribution": r, "share": s,
                   "interpretation": "/path/to/average.png"}, ...],   else looked up by index
     "min_share": s0,                              optional; features with a smaller share are left
                                                   out of the combined map, greyed here (default 0.05)
     ...}

  panel, optional: ``"panel": "name.png"`` in the record, else ``<same stem>.png`` beside the JSON
  (``vebi explain`` draws it); shown when there are no maps.

  maps, optional: ``<same stem>.safetensors`` beside the JSON with (H, W) tensors in [0, 1]:
  "combined" and "feature<rank>" (what ``Explanation.save`` writes). The record of method
  "vebi" (or "vebi_nofix") leads its image's group; the other records of the same image are
  shown as baselines (their "combined" map, else their panel).

Evaluation (``vebi evaluate``), ``evaluation/``::

    results.json  optional; keys read: "accuracy" (float, on the evaluated images),
                  "tables" and "figures": lists of {"file": name, "title": str,
                  "caption": str, "section": "iou" | "scores" | "ablation" | "sanity" | any other key},
                  and for the generated verdicts and the report's IoU plot (each left out
                  when its numbers are absent, see ``vebi.report.verdict``): "summary",
                  "methods", "ablation", "union_ablation"
    *.csv         tables (header row first); a column X with columns X_low and X_high (or
                  mean / low / high) shows as "X [low, high]", one with X_std as "X ± std"
    *.png         plots

Without "tables"/"figures" lists every ``*.csv`` / ``*.png`` of the folder is shown, in name
order, in the section its name suggests ("iou" -> IoU, "ablation" -> ablation, "sanity" -> sanity, else other
scores), with a caption chosen by keywords of its name.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vebi.io.artifacts import check_made_from, load_relevance, relevance_hash
from vebi.io.folders import SCHEMA_VERSION, read_json, run_folder
from vebi.errors import VebiError
from vebi.core.relevance import Relevance
from vebi.report import tables as table_format
from vebi.report.tables import Table
from vebi.report.verdict import IoUCurve, iou_curves, verdicts

__all__ = ["ClassView", "EvalGroup", "EvaluationView", "ExplainedFeatureView", "ExplanationView", "FeatureView",
           "Figure", "LayerView", "MapRef", "Picture", "ReportData", "Table", "collect_run"]

EVAL_SECTIONS: dict[str, str] = {"iou": "IoU with the ground-truth masks", "scores": "Other scores",
                                 "ablation": "Feature ablation", "sanity": "Sanity checks"}
MAX_TABLE_ROWS = 200
MIN_SHARE = 0.05  # features below this share of the evidence are greyed (unless the record names its own)


@dataclass(frozen=True)
class LayerView:
    name: str
    channels: int
    relevant: int  # features of this layer relevant to at least one class


@dataclass(frozen=True)
class FeatureView:
    """One relevant feature of one class, with its interpretation images when they exist."""

    index: int
    layer: str
    channel: int
    weight: float
    average: Path | None = None
    crops: tuple[Path, ...] = ()
    receptive_field: tuple[int, int] | None = None
    count: int | None = None  # crops averaged


@dataclass(frozen=True)
class ClassView:
    index: int
    name: str
    images: int | None  # images of this class in the collected data
    features: tuple[FeatureView, ...]  # all relevant features, by |weight| descending
    grid: Path | None = None

    @property
    def positive(self) -> int:
        return sum(f.weight > 0 for f in self.features)

    @property
    def negative(self) -> int:
        return sum(f.weight < 0 for f in self.features)


@dataclass(frozen=True)
class MapRef:
    """A heatmap (H, W) with values in [0, 1], stored as tensor ``key`` of the safetensors file ``path``."""

    path: Path
    key: str


Picture = Path | MapRef  # an image file, or a heatmap the report draws


@dataclass(frozen=True)
class ExplainedFeatureView:
    index: int
    layer: str
    channel: int
    weight: float | None
    contribution: float | None  # r = x_f w_f
    share: float | None  # r_f / sum of the positive r
    heatmap: Picture | None
    interpretation: Path | None


@dataclass(frozen=True)
class ExplanationView:
    name: str  # the explained image's folder/file name
    image: Path | None
    true_class: str | None
    method: str
    predicted: str
    score: float | None
    target: str | None  # set when the explained class is not the predicted one
    features: tuple[ExplainedFeatureView, ...]
    combined: Picture | None
    panel: Path | None
    baselines: tuple[tuple[str, Picture], ...]  # (method, its map or panel) for the same image
    min_share: float = MIN_SHARE  # features with a smaller share are left out of the combined map

    @property
    def correct(self) -> bool | None:
        return None if self.true_class is None else self.true_class == self.predicted


@dataclass(frozen=True)
class Figure:
    title: str
    caption: str
    path: Path


@dataclass(frozen=True)
class EvalGroup:
    key: str  # "iou", "scores", "ablation" or another section a results.json names
    title: str
    tables: tuple[Table, ...]
    figures: tuple[Figure, ...]
    verdict: str | None = None  # what the numbers show, in a sentence or two (``vebi.report.verdict``)


@dataclass(frozen=True)
class EvaluationView:
    folder: Path
    accuracy: float | None
    groups: tuple[EvalGroup, ...]  # only non-empty groups, in EVAL_SECTIONS order, then other sections
    iou_curves: tuple[IoUCurve, ...] = ()  # per method, for the report's own IoU plot
    settings_note: str | None = None  # the evaluation's settings a reader needs to weigh the numbers


@dataclass(frozen=True)
class ReportData:
    """The run as the report shows it; sections whose inputs are absent are empty or None."""

    run_dir: Path
    model: str | None
    weights: str | None
    data: str | None
    layers: tuple[LayerView, ...]
    num_features: int
    num_images: int
    response: str
    labels: str
    accuracy: float | None  # on the collected images (labels == "true" only)
    class_names: tuple[str, ...]
    relevance: Relevance | None
    classes: tuple[ClassView, ...]  # empty without a relevance fit
    has_interpretation: bool
    explanations: tuple[ExplanationView, ...]
    evaluation: EvaluationView | None
    warnings: tuple[str, ...]
    versions: dict[str, str]

    @property
    def mu(self) -> float | None:
        return None if self.relevance is None else self.relevance.mu

    @property
    def features_per_class(self) -> int | None:
        """The target mu was chosen for (``vebi fit --features-per-class``), None when mu was given."""
        return None if self.relevance is None else self.relevance.features_per_class


def collect_run(run_dir: str | Path, *, explanations_dir: str | Path | None = None,
                evaluation_dir: str | Path | None = None, max_explanations: int | None = None) -> ReportData:
    """Read the run folder (and the optional stage folders, defaults inside it) into a ``ReportData``."""
    run = run_folder(run_dir)
    warnings: list[str] = []
    stats = read_json(run / "stats.json", "statistics")
    info = read_json(run / "run.json", "run information") if (run / "run.json").is_file() else {}
    class_names = tuple(_utf8(str(c), "class name", run / "stats.json")
                        for c in _key(stats, "class_names", run / "stats.json"))
    relevance = load_relevance(run) if (run / "relevance.json").is_file() else None
    if relevance is not None and relevance.class_names != class_names:
        raise VebiError(f"{run / 'relevance.json'} was fitted on other classes than {run / 'stats.json'} holds")

    interp_file = run / "interpretation" / "interpretation.json"
    interp = _read_interpretation(interp_file, warnings, run) if interp_file.is_file() else None
    classes = _classes(relevance, _class_counts(run, len(class_names)), interp, warnings) if relevance else ()
    by_index = {f.index: f.average for c in classes for f in c.features if f.average is not None}
    expl_dir = Path(explanations_dir) if explanations_dir is not None else run / "explanations"
    explanations = (_read_explanations(expl_dir, class_names, by_index, warnings, max_explanations,
                                       relevance_hash(run))
                    if expl_dir.is_dir() else ())
    eval_dir = Path(evaluation_dir) if evaluation_dir is not None else run / "evaluation"
    evaluation = _read_evaluation(eval_dir, warnings) if eval_dir.is_dir() else None

    space = _key(stats, "space", run / "stats.json")
    layers, channels = list(space["layers"]), [int(c) for c in space["channels"]]
    union = set(relevance.union()) if relevance else set()
    offsets = [sum(channels[:i]) for i in range(len(channels) + 1)]
    layer_views = tuple(LayerView(str(name), c, sum(offsets[i] <= f < offsets[i + 1] for f in union))
                        for i, (name, c) in enumerate(zip(layers, channels, strict=True)))
    scored, correct = int(stats.get("scored", 0)), int(stats.get("correct", 0))
    model, data = info.get("model") or {}, info.get("data") or {}
    return ReportData(
        run_dir=run.resolve(), model=model.get("spec"), weights=model.get("weights"), data=data.get("path"),
        layers=layer_views, num_features=sum(channels), num_images=int(stats.get("count", 0)),
        response=str(stats.get("response", "")), labels=str(stats.get("labels", "")),
        accuracy=correct / scored if scored and stats.get("labels") == "true" else None,
        class_names=class_names, relevance=relevance, classes=classes, has_interpretation=interp is not None,
        explanations=explanations, evaluation=evaluation, warnings=tuple(warnings),
        versions={str(k): str(v) for k, v in (stats.get("versions") or {}).items()},
    )


# --------------------------------------------------------------------------- helpers


def _key(data: dict[str, Any], key: str, path: Path) -> Any:
    if key not in data:
        raise VebiError(f"{path} has no '{key}' entry")
    return data[key]


def _image(base: Path, value: Any, what: str, path: Path, warnings: list[str], root: Path) -> Path | None:
    """The image a JSON entry names (relative to ``base``, inside ``root``), or None with a warning when
    missing."""
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise VebiError(f"{path}: {what} should be a file name, not {value!r}")
    found = _resolve(base, value, root, path)
    if not found.is_file():
        warnings.append(f"{found} (named in {path.name}) is missing; left out")
        return None
    return found


def _utf8(text: str, what: str, path: Path) -> str:
    """``text`` unless it holds bytes that are not UTF-8 (file names read with surrogate escapes)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise VebiError(f"the {what} {text!r} in {path} is not valid UTF-8; rename it") from None
    return text


def _class_counts(run: Path, num_classes: int) -> list[int | None]:
    path = run / "stats.safetensors"
    if not path.is_file():
        return [None] * num_classes
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            counts = f.get_tensor("class_counts").tolist()
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise VebiError(f"{path} is not a readable safetensors file ({exc})") from None
    return [int(c) for c in counts] if len(counts) == num_classes else [None] * num_classes


# --------------------------------------------------------------------------- interpretation


def _read_interpretation(path: Path, warnings: list[str], root: Path) -> dict[int, tuple[Path | None, dict[int, FeatureView]]]:
    """{class index: (grid image, {feature index: FeatureView with images})}."""
    data = read_json(path, "interpretations")
    check_made_from(data, "relevance_sha256", relevance_hash(root), path, "relevance fit", "vebi interpret")
    out: dict[int, tuple[Path | None, dict[int, FeatureView]]] = {}
    for cls in _key(data, "classes", path):
        j = int(_key(cls, "index", path))
        feats = {}
        for f in cls.get("features", []):
            crops_value = f.get("crops") or []
            crops = [crops_value] if isinstance(crops_value, str) else list(crops_value)
            found = [_image(path.parent, c, "a crop", path, warnings, root) for c in crops]
            rf = f.get("receptive_field")
            index = int(_key(f, "index", path))
            feats[index] = FeatureView(index, str(f.get("layer", "")), int(f.get("channel", -1)),
                                       float(f.get("weight", 0.0)),
                                       _image(path.parent, f.get("average"), "average", path, warnings, root),
                                       tuple(p for p in found if p is not None),
                                       (int(rf[0]), int(rf[1])) if rf else None,
                                       None if f.get("count") is None else int(f["count"]))
        out[j] = (_image(path.parent, cls.get("grid"), "grid", path, warnings, root), feats)
    return out


def _classes(relevance: Relevance, counts: Sequence[int | None],
             interp: dict[int, tuple[Path | None, dict[int, FeatureView]]] | None,
             warnings: list[str]) -> tuple[ClassView, ...]:
    out = []
    stale = []
    for j, name in enumerate(relevance.class_names):
        grid, images = interp.get(j, (None, {})) if interp is not None else (None, {})
        features = []
        for rf in relevance.relevant(j):
            seen = images.get(rf.index)
            features.append(FeatureView(rf.index, rf.layer, rf.channel, rf.weight,
                                        seen.average if seen else None, seen.crops if seen else (),
                                        seen.receptive_field if seen else None, seen.count if seen else None))
        if interp is not None and images and set(images) - {f.index for f in features}:
            stale.append(name)
        out.append(ClassView(j, name, counts[j], tuple(features), grid))
    if stale:
        warnings.append(f"the interpretation images of {len(stale)} class(es) were built for another relevance "
                        "fit; re-run `vebi interpret` (features without images are listed without them)")
    return tuple(out)


# --------------------------------------------------------------------------- explanations


def _read_explanations(folder: Path, class_names: Sequence[str], interpretations: dict[int, Path],
                       warnings: list[str], limit: int | None, made_from: str | None) -> tuple[ExplanationView, ...]:
    """Records of ``folder/*.json`` and ``folder/*/*.json`` grouped by image; vebi's record leads each group."""
    groups: dict[str, list[tuple[Path, dict[str, Any]]]] = {}
    for path in sorted(folder.glob("*.json")) + sorted(folder.glob("*/*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise VebiError(f"{path} is not valid JSON ({exc})") from None
        if not isinstance(data, dict) or "predicted" not in data:
            continue  # another kind of JSON file in the folder
        if data.get("schema") != SCHEMA_VERSION:
            raise VebiError(f"{path} has schema version {data.get('schema')}, this vebi reads {SCHEMA_VERSION}")
        check_made_from(data, "relevance_sha256", made_from, path, "relevance fit", "vebi explain")
        image = data.get("image")
        key = str(_resolve(path.parent, image, folder, path).resolve()) if isinstance(image, str) and image else f"stem:{path.stem}"
        groups.setdefault(key, []).append((path, data))
    out = []
    for records in list(groups.values())[:limit]:
        main = next((r for r in records if r[1].get("method", "vebi") in ("vebi", "vebi_nofix")), records[0])
        others = [r for r in records if r is not main]
        try:
            out.append(_explanation(main, others, class_names, interpretations, warnings, folder))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            if isinstance(exc, VebiError):
                raise
            raise VebiError(f"{main[0]} has a missing or malformed entry ({exc!r})") from None
    return tuple(out)


def _resolve(base: Path, value: str, root: Path, path: Path) -> Path:
    """``value`` relative to ``base``; VebiError when it leads outside ``root`` (the report reads nothing else)."""
    found = base / value
    try:
        inside = found.resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL byte
        inside = False
    if not inside:
        raise VebiError(f"{path} names the file {value!r}, outside {root}; the report reads only files inside it")
    return found


def _maps(path: Path) -> tuple[Path, set[str]] | None:
    """The safetensors file of heatmaps beside an explanation's JSON, and the names it holds."""
    maps = path.with_suffix(".safetensors")
    if not maps.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(maps), framework="pt") as f:
            return maps, set(f.keys())
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise VebiError(f"{maps} is not a readable safetensors file ({exc})") from None


def _map(maps: tuple[Path, set[str]] | None, key: str) -> MapRef | None:
    return MapRef(maps[0], key) if maps is not None and key in maps[1] else None


def _class_name(data: dict[str, Any], key: str, class_names: Sequence[str]) -> str:
    name = data.get(f"{key}_name")
    if name is not None:
        return str(name)
    index = data.get(key)
    if isinstance(index, int) and 0 <= index < len(class_names):
        return class_names[index]
    return str(index)


def _panel(path: Path, data: dict[str, Any], warnings: list[str], root: Path) -> Path | None:
    """The record's "panel" when it names one, else the ``<stem>.png`` beside it if there is one."""
    if data.get("panel"):
        return _image(path.parent, data["panel"], "panel", path, warnings, root)
    panel = path.with_suffix(".png")
    return panel if panel.is_file() else None


def _explanation(main: tuple[Path, dict[str, Any]], others: list[tuple[Path, dict[str, Any]]],
                 class_names: Sequence[str], interpretations: dict[int, Path],
                 warnings: list[str], root: Path) -> ExplanationView:
    path, data = main
    base = path.parent
    maps = _maps(path)
    features = []
    for f in data.get("features", []):
        index = int(_key(f, "index", path))
        link = f.get("interpretation")
        try:  # a link into another run folder (a copied run) falls back to this run's interpretation
            interp = _resolve(base, link, root.parent, path) if isinstance(link, str) and link else None
        except VebiError:
            interp = None
        if interp is None or not interp.is_file():
            interp = interpretations.get(index)
        features.append(ExplainedFeatureView(
            index, str(f.get("layer", "")), int(f.get("channel", -1)),
            None if f.get("weight") is None else float(f["weight"]),
            None if f.get("contribution") is None else float(f["contribution"]),
            None if f.get("share") is None else float(f["share"]),
            _map(maps, f"feature{f.get('rank', len(features))}"), interp))
    image_value = data.get("image")
    image = _image(base, image_value, "image", path, warnings, root)
    predicted, target = _class_name(data, "predicted", class_names), _class_name(data, "target", class_names)
    true_class = data.get("true_class")
    source = data.get("source") if isinstance(data.get("source"), str) else None  # the explained file, for people
    if source is not None:
        _utf8(source, "file name", path)
    folder_name = Path(source).parent.name if source else image.parent.name if image is not None else None
    if true_class is None and folder_name in class_names:
        true_class = folder_name  # class-per-folder data
    baselines: list[tuple[str, Picture]] = []
    for other_path, other in others:
        picture = _map(_maps(other_path), "combined") or _panel(other_path, other, warnings, root)
        if picture is not None:
            baselines.append((str(other.get("method", other_path.parent.name)), picture))
    return ExplanationView(
        name=source or ("/".join(Path(image_value).parts[-2:]) if isinstance(image_value, str) and image_value
                        else path.stem),
        image=image, true_class=None if true_class is None else str(true_class), method=str(data.get("method", "vebi")),
        predicted=predicted, score=None if data.get("score") is None else float(data["score"]),
        target=None if data.get("target") in (None, data.get("predicted")) else target,
        features=tuple(features), combined=_map(maps, "combined"),
        panel=_panel(path, data, warnings, root), baselines=tuple(baselines),
        min_share=float(data["min_share"]) if isinstance(data.get("min_share"), (int, float)) else MIN_SHARE,
    )


# --------------------------------------------------------------------------- evaluation

# (keywords all in the file name, title, the sentence on how to read it); first match wins
_EVAL_CAPTIONS: tuple[tuple[tuple[str, ...], str, str], ...] = (
    (("iou", "png"), "IoU vs threshold",
     "Each line is one method's mean IoU between its thresholded heatmap and the ground-truth mask as the "
     "threshold rises (band: 95 % interval over images); a higher curve localises the class-deciding part better."),
    (("iou",), "IoU per method",
     "Per method the IoU with the mask averaged over thresholds, and the best single threshold with its IoU; "
     "higher is better."),
    (("pointing",), "Pointing game",
     "Share of images whose heatmap maximum lies inside the mask; higher is better."),
    (("mass",), "Heatmap mass inside the mask",
     "Share of each heatmap's total mass that falls inside the mask; higher means less attention spent elsewhere."),
    (("deletion",), "Deletion curves",
     "Class score as pixels are removed in heatmap order; a faster drop (smaller area) means the map found the "
     "pixels the model relies on."),
    (("insertion",), "Insertion curves",
     "Class score as pixels are added in heatmap order; a faster rise (larger area) means the map found the "
     "pixels the model relies on."),
    (("ablation", "png"), "Ablation curves",
     "Accuracy as more features are zeroed, the relevant ones in order of |weight| against random and most "
     "active ones; a steeper drop for relevant features means the model depends on them."),
    (("ablation",), "Ablation",
     "Accuracy of each class and mean class accuracy (mCA) after zeroing features; lower after ablating the "
     "relevant features than after ablating random ones means they matter."),
    (("score",), "Scores per method",
     "Per method the localisation and faithfulness scores; see each column's name for its direction."),
)


def _caption(name: str) -> tuple[str, str]:
    lower = name.lower()
    for keys, title, caption in _EVAL_CAPTIONS:
        if all(k in lower for k in keys):
            return title, caption
    title = Path(name).stem.replace("_", " ").replace("-", " ").strip().capitalize()
    return title, "Written by the evaluation stage; see its columns or axes for what is measured."


def _section(name: str) -> str:
    lower = name.lower()
    if "sanity" in lower:
        return "sanity"
    return "iou" if "iou" in lower else "ablation" if "ablation" in lower else "scores"


def _read_evaluation(folder: Path, warnings: list[str]) -> EvaluationView | None:
    results_path = folder / "results.json"
    results = read_json(results_path, "evaluation results") if results_path.is_file() else {}
    entries: list[tuple[str, str, str, str]] = []  # (file, title, caption, section)
    listed = "tables" in results or "figures" in results
    if listed:
        for entry in list(results.get("tables", [])) + list(results.get("figures", [])):
            file = str(_key(entry, "file", results_path))
            title, caption = _caption(file)
            section = entry.get("section") or _section(file)
            if not isinstance(section, str) or not section.isidentifier():
                raise VebiError(f"{results_path}: section {section!r} of {file} is not a name of letters, "
                                "digits and underscores")
            entries.append((file, entry.get("title") or title, entry.get("caption") or caption, section))
    else:
        for path in sorted(folder.iterdir()):
            if path.is_file() and path.suffix.lower() in (".csv", ".png") and not path.name.startswith("."):
                entries.append((path.name, *_caption(path.name), _section(path.name)))
    sections = list(EVAL_SECTIONS) + [s for s in dict.fromkeys(e[3] for e in entries) if s not in EVAL_SECTIONS]
    tables: dict[str, list[Table]] = {k: [] for k in sections}
    figures: dict[str, list[Figure]] = {k: [] for k in sections}
    for file, title, caption, section in entries:
        path = folder / file
        if not path.is_file():
            warnings.append(f"{path} (named in {results_path.name}) is missing; left out")
        elif path.suffix.lower() == ".csv":
            tables[section].append(_read_table(path, title, caption))
        else:
            figures[section].append(Figure(title, caption, path))
    said = verdicts(results)
    groups = tuple(EvalGroup(k, EVAL_SECTIONS.get(k) or k.replace("_", " ").capitalize(), tuple(tables[k]),
                             tuple(figures[k]), said.get(k))
                   for k in sections if tables[k] or figures[k])
    accuracy = results.get("accuracy")
    if not groups and accuracy is None:
        return None
    return EvaluationView(folder.resolve(), None if accuracy is None else float(accuracy), groups,
                          iou_curves(results), _settings_note(results.get("settings")))


def _settings_note(settings: Any) -> str | None:
    """One sentence on the curve steps and the method options other than the defaults."""
    if not isinstance(settings, dict):
        return None
    parts = []
    if isinstance(settings.get("steps"), int):
        steps = settings["steps"]
        parts.append(f"deletion/insertion curves in {steps} step{'' if steps == 1 else 's'}")
    options = settings.get("method_options")
    if isinstance(options, dict):
        for method, values in options.items():
            if isinstance(values, dict) and values:
                parts.append(f"{method} with " + ", ".join(f"{k} = {v}" for k, v in values.items()))
    return "Settings: " + "; ".join(parts) + "." if parts else None


def _read_table(path: Path, title: str, caption: str) -> Table:
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = [tuple(r) for r in csv.reader(f) if r]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise VebiError(f"{path} is not a readable CSV file ({exc})") from None
    if not rows:
        raise VebiError(f"{path} is empty (a header row is expected)")
    return table_format.format_table(title, caption, path, rows[0], rows[1:], MAX_TABLE_ROWS)
