"""The stages of the method over run folders: collect -> fit -> interpret -> explain.

Each function reads what earlier stages saved in the run folder (:class:`vebi.run.Run`) and saves
its own result there, so the command line, the demo and a notebook run the same code::

    collect_run("runs/mine", "torchvision:resnet18", "photos/train", weights="r18.pt", size=224)
    fit_run("runs/mine", mu=10)
    interpret_run("runs/mine", "photos/train")
    explain_files("runs/mine", ["photos/test/tulip/1.jpg"])

The evaluation (:func:`vebi.evaluate.runner.evaluate_run`) and the report
(:func:`vebi.report.build_report`) take a run folder the same way.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vebi.errors import VebiError
from vebi.io.folders import data_folder
from vebi.run import Run, data_record, model_record, resolve_device

if TYPE_CHECKING:
    import torch

    from vebi.core.relevance import Relevance
    from vebi.core.stats import FeatureStats
    from vebi.explanation.result import Explanation
    from vebi.interpretation.crops import Interpretation

__all__ = ["ExplainedFile", "collect_run", "explain_files", "fit_run", "interpret_run"]


def collect_run(
    out: str | Path,
    model: str,
    data: str | Path,
    *,
    weights: str | None = None,
    model_args: Mapping[str, Any] | None = None,
    size: int | None = None,
    normalize: str = "auto",
    classes: str | Path | None = None,
    batch_size: int = 32,
    workers: int = 0,
    device: str | torch.device | None = "auto",
    checkpoint_every: int = 0,
    progress: bool = True,
    **options: Any,
) -> FeatureStats:
    """One pass of ``model`` (a spec, see :func:`vebi.models.load_model`) over the image folder
    ``data``; writes ``run.json`` and the statistics into ``out``. ``options`` go to
    :func:`vebi.core.collect.collect` (layers, response, labels, top_k, gram_dtype, memory_budget).
    The class map (:meth:`vebi.classes.ClassMap.resolve`) comes from ``classes`` (a classes file),
    the torchvision weights' categories, or the folder names; torchvision weights also set the
    preprocessing (their own resize + crop). Warns (:class:`vebi.errors.VebiWarning`) about tiny
    classes, a top-K above the images per class, and an accuracy below 0.5 without a class-map source.
    Under torchrun every process takes its share and process 0 writes the result."""
    import warnings

    from vebi.classes import ClassMap, data_warnings
    from vebi.core import distributed
    from vebi.core.collect import collect_dataset
    from vebi.errors import VebiWarning
    from vebi.io.artifacts import model_fingerprint, save_stats
    from vebi.models import load_model, output_count, torchvision_weights, weights_preprocessing

    if batch_size < 1 or checkpoint_every < 0:
        raise VebiError("batch_size must be at least 1, checkpoint_every at least 0")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise VebiError(f"{out} exists and is not a folder; choose another run folder")
    dev = distributed.device_for(resolve_device(device), distributed.current())
    with distributed.process_group(dev) as where:
        minfo = model_record(model, weights, model_args)
        net = load_model(minfo["spec"], minfo["weights"], minfo["args"]).to(dev)
        enum = torchvision_weights(model, weights, lambda: output_count(net))
        dinfo = data_record(net, model, data, size, normalize, weights_preprocessing(enum) if enum else None)
        probe = Run(out, {"model": minfo, "data": dinfo})
        dataset = probe.dataset()
        class_map = ClassMap.resolve(dataset.classes, classes=classes,
                                     categories=enum.meta.get("categories") if enum else None)

        def write(stats: FeatureStats) -> None:
            save_stats(stats, out, net)
            Run.create(out, minfo, dinfo, stats.space.layers, class_map)
            _clear_stale(out, "stats")  # after: a fit of the old statistics is refused by its hash meanwhile

        stats = collect_dataset(
            net, dataset, batch_size=batch_size, workers=workers, checkpoint=out / "checkpoints",
            checkpoint_every=checkpoint_every, on_result=write, progress=progress and where.is_main,
            checkpoint_key={"model": minfo, "fingerprint": model_fingerprint(net), "data": dinfo,
                            "classes": class_map.to_dict()},
            class_names=dataset.classes, outputs=class_map.outputs, **options)
        if not where.is_main:
            return stats
        for message in data_warnings(stats.class_counts.tolist(), class_map.names, stats.top_k):
            warnings.warn(message, VebiWarning, stacklevel=2)
        if class_map.source == "order" and stats.accuracy is not None and stats.accuracy < 0.5:
            warnings.warn(f"accuracy {stats.accuracy:.3f} (chance {1 / len(dataset.classes):.3f}) with the sorted "
                          "folders taken as model outputs 0..C-1; if the model orders its outputs otherwise, pass "
                          "--classes FILE", VebiWarning, stacklevel=2)
        return stats


def fit_run(run_dir: str | Path, mu: float = 10.0, *, features_per_class: int | None = None, solver: str = "auto",
            device: str | torch.device = "cpu", progress: bool = True,
            memory_budget: str | int | None = None) -> Relevance:
    """Fit the mu-LASSO relevance from the run's statistics (no pass over the images) and save it.

    ``features_per_class``: find the mu that gives about that many relevant features per class
    (see :func:`vebi.core.relevance.fit_relevance`). Before the statistics are read, the memory of
    G and of the solver is checked against ``memory_budget`` (default $VEBI_MEMORY_BUDGET, else free memory).
    """
    if not 0 < mu < float("inf"):
        raise VebiError(f"mu must be a positive finite number, not {mu}")
    run = Run.open(run_dir)  # before torch is imported: a wrong folder is told at once

    from vebi.core.lasso import SOLVERS
    from vebi.core.relevance import fit_relevance
    from vebi.io.artifacts import save_relevance

    if solver not in SOLVERS:
        raise VebiError(f"solver must be one of {', '.join(SOLVERS)}, not {solver!r}")
    dev = resolve_device(device)
    check_fit_memory(run.root, dev, memory_budget)
    relevance = fit_relevance(run.stats, mu, features_per_class=features_per_class, solver=solver, device=dev,
                              progress=progress, memory_budget=memory_budget)
    save_relevance(relevance, run.root)
    _clear_stale(run.root, "relevance")
    return relevance


def check_fit_memory(run_dir: Path, device: torch.device, given: str | int | None = None) -> None:
    """Refuse in one line, before reading them, statistics whose G plus the torch solver's working
    memory exceed the budget (SPAMS, which copies G, is left out by the solver's "auto" choice then)."""
    import json

    import torch

    from vebi.core import memory
    from vebi.core.features import FeatureSpace
    from vebi.core.lasso import working_memory

    try:
        meta = json.loads((run_dir / "stats.json").read_text())
        m = FeatureSpace.from_dict(meta["space"]).size
        classes = len(meta["class_names"])
        itemsize = torch.empty((), dtype=getattr(torch, meta.get("gram_dtype", "float64"))).element_size()
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return  # reading the statistics reports what is wrong with them
    gram = itemsize * m * m
    need = gram + 8 * m * classes + working_memory(m, classes, m, "torch")
    limit, source = memory.budget(device if device.type == "cuda" else "cpu", given)
    if need > limit:
        raise VebiError(
            f"fitting the mu-LASSO on {m} features needs about {memory.format_size(need)} (G = X^T X alone "
            f"{memory.format_size(gram)}), more than {memory.format_size(limit)} ({source}); restrict the layers "
            f"(--layer, see `vebi layers`) and collect again, with --gram-dtype float32 for half of G, or raise "
            f"--memory-budget / ${memory.ENV_BUDGET} if the memory is there")


def _clear_stale(run_dir: Path, replaced: str) -> None:
    """Remove what depended on the run's statistics or fit, about to be replaced, and say so (a VebiWarning)."""
    import warnings

    from vebi.errors import VebiWarning
    from vebi.io.artifacts import clear_dependents

    removed = clear_dependents(run_dir, replaced)
    if removed:
        warnings.warn(f"new {'statistics' if replaced == 'stats' else 'relevance fit'} in {run_dir}: removed what "
                      f"was made from the old one ({', '.join(removed)})", VebiWarning, stacklevel=3)


def interpret_run(run_dir: str | Path, data: str | Path, *, ignore_global: bool = False, workers: int = 0,
                  trust_model: bool = False, **options: Any) -> tuple[tuple[Interpretation, ...], Path]:
    """Average receptive-field crops of every relevant feature's top images of ``data`` (the folder
    the statistics were collected on); saved to ``RUN/interpretation``. ``options`` go to
    :func:`vebi.interpretation.crops.interpret` (top_k, size, weighted, classes, max_features,
    keep_crops, progress). Returns the interpretations and their folder. ``trust_model``: see
    :func:`vebi.run.check_trusted`."""
    import warnings

    run = Run.open(run_dir)  # before torch is imported: a wrong folder is told at once
    data_folder(data)

    from vebi.classes import data_warnings
    from vebi.errors import VebiWarning
    from vebi.interpretation.crops import interpret
    from vebi.interpretation.receptive import receptive_fields
    from vebi.interpretation.store import save_interpretations
    from vebi.io.artifacts import relevance_hash

    stats, relevance = run.stats, run.relevance
    top_k = min(options.get("top_k", 100), stats.top_k)
    for message in data_warnings(stats.class_counts.tolist(), run.classes.names, top_k, few=False):
        warnings.warn(message, VebiWarning, stacklevel=2)
    model = run.model(weights=False, trust=trust_model)  # receptive fields depend on the architecture only
    dataset = run.dataset(data, display=True)
    if tuple(dataset.classes) != tuple(stats.class_names):
        raise VebiError(f"{data} has classes {', '.join(dataset.classes)}, the run has {', '.join(stats.class_names)}")
    fields = receptive_fields(model, stats.space.layers, input_size=stats.input_size, ignore_global=ignore_global)
    results = interpret(relevance, stats, dataset, fields=fields, num_workers=workers, **options)
    settings = {"top_k": options.get("top_k", 100), "size": options.get("size", 64),
                "weighted": options.get("weighted", False), "keep_crops": options.get("keep_crops", 8),
                "ignore_global": ignore_global, "max_features": options.get("max_features"),
                "data": str(Path(data).resolve()), "fill": "mean of the images read"}
    return results, save_interpretations(results, run.root, settings, relevance_hash(run.root))


@dataclass(frozen=True)
class ExplainedFile:
    """One explained image file: its explanation and where it was written (``stem`` + .json,
    .safetensors, .png); or, where vebi could not explain its prediction (an output that is none of
    the run's classes), ``explanation`` None and ``skipped`` saying why."""

    path: Path
    explanation: Explanation | None
    stem: Path | None
    skipped: str | None = None


def explain_files(
    run_dir: str | Path,
    images: Sequence[str | Path],
    *,
    method: str = "vebi",
    out: str | Path | None = None,
    target: int | str | None = None,
    batch_size: int = 16,
    device: str | torch.device | None = "auto",
    trust_model: bool = False,
    **options: Any,
) -> list[ExplainedFile]:
    """Explain each image file with ``method`` (vebi or a baseline); per image write
    ``OUT/STEM.json`` + ``.safetensors`` (:meth:`Explanation.save`) and a PNG panel. ``OUT``
    defaults to ``RUN/explanations`` (``RUN/explanations/METHOD`` for other methods), where the
    report finds them. ``target``: a model output (int) or a string read by
    :meth:`vebi.classes.ClassMap.output` (class name, ``index:N``, ``name:TEXT``); None explains the
    prediction. ``options`` go to the method where it declares them (num_features, pool_fix).
    ``trust_model``: see :func:`vebi.run.check_trusted`."""
    if batch_size < 1:
        raise VebiError(f"batch_size must be at least 1, not {batch_size}")
    run = Run.open(run_dir)  # before torch is imported: a wrong folder or file name is told at once
    for path in images:
        if not Path(path).is_file():
            raise VebiError(f"cannot read image {path}: no such file")

    from vebi.data import load_image
    from vebi.explanation.explainer import NotARunClass
    from vebi.explanation.panel import write_panel
    from vebi.io.artifacts import relevance_hash
    from vebi.methods import build_method

    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise VebiError(f"{out} exists and is not a folder; choose another output folder")
    folder = Path(out) if out is not None else run.root / "explanations" / ("" if method == "vebi" else method)
    images_dir = (Path(out) if out is not None else run.root / "explanations") / "images"
    relevance = run.relevance
    explainer = build_method(method, relevance, strict=False, interpretations=str(run.root), **options)
    model = run.model(trust=trust_model).to(resolve_device(device))
    to_input, to_display = run.transform(), run.transform(display=True)
    classes = run.classes
    made_from = relevance_hash(run.root)

    loaded = []
    for path in images:
        picture = load_image(path, run.channels)
        loaded.append((Path(path), to_input(picture), to_display(picture)))
    stems = _unique_stems([p for p, _, _ in loaded])
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (_, tensor, _) in enumerate(loaded):
        groups.setdefault(tuple(tensor.shape), []).append(i)
    folder.mkdir(parents=True, exist_ok=True)
    written: dict[int, ExplainedFile] = {}
    for members in groups.values():
        for start in range(0, len(members), batch_size):
            chunk = members[start:start + batch_size]
            try:
                pairs = list(zip(chunk, explainer.explain(model, _stack(loaded, chunk), target, classes), strict=True))
            except NotARunClass:
                if target is not None:
                    raise
                pairs = []
                for i in chunk:  # explain the images vebi can, say which it cannot
                    try:
                        pairs.append((i, explainer.explain(model, _stack(loaded, [i]), None, classes)[0]))
                    except NotARunClass as exc:
                        written[i] = ExplainedFile(loaded[i][0], None, None, str(exc))
            for i, result in pairs:
                path, _, shown = loaded[i]
                stem = folder / stems[i]
                copy = _keep_image(path, images_dir)
                result = dataclasses.replace(result, image=os.path.relpath(copy, stem.parent),
                                             source="/".join(path.resolve().parts[-2:]), relevance_sha256=made_from)
                write_panel(stem.with_name(stem.name + ".png"), shown, result)
                result.save(stem)
                written[i] = ExplainedFile(path, result, stem)
    if written and all(done.explanation is None for done in written.values()):
        raise VebiError(f"{written[0].path}: {written[0].skipped}")
    return [written[i] for i in range(len(loaded))]


def _stack(loaded: Sequence[tuple[Path, torch.Tensor, torch.Tensor]], members: Sequence[int]) -> torch.Tensor:
    import torch

    return torch.stack([loaded[i][1] for i in members])


def _keep_image(path: Path, folder: Path) -> Path:
    """A copy of the explained file in ``folder``, named by its content hash (its explanations by every
    method share it), so that the run's report reads nothing outside the run."""
    import hashlib

    from vebi.io.atomic import write_bytes

    data = path.read_bytes()
    copy = folder / f"{hashlib.sha256(data).hexdigest()[:16]}{path.suffix.lower()}"
    if not copy.is_file():
        write_bytes(copy, data)
    return copy


def _unique_stems(paths: Sequence[Path]) -> list[str]:
    stems: list[str] = []
    seen: dict[str, int] = {}
    for path in paths:
        # a file name that is not UTF-8 (bytes read as surrogates) gets "_" there: outputs have UTF-8 names
        stem = Path(path).stem.encode("utf-8", "surrogateescape").decode("utf-8", "replace").replace("\ufffd", "_")
        stem = stem or "image"
        count = seen.get(stem, 0)
        seen[stem] = count + 1
        stems.append(stem if count == 0 else f"{stem}-{count}")
    return stems
