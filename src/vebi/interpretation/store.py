"""Saving and loading interpretations: ``RUN/interpretation/`` with PNG pictures, JSON and tensors."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from vebi.errors import VebiError
from vebi.interpretation.crops import FeatureInterpretation, Interpretation
from vebi.interpretation.drawing import crop_strip, save_pil, slug, write_grid, write_png
from vebi.io.atomic import atomic_path, replace_folder, write_text

__all__ = ["INTERPRETATION_DIR", "grid_file", "load_interpretations", "save_interpretations"]

INTERPRETATION_DIR = "interpretation"
SCHEMA_VERSION = 1


def save_interpretations(interpretations: Sequence[Interpretation], run_dir: str | os.PathLike[str],
                         settings: Mapping[str, Any] | None = None, relevance_sha256: str | None = None) -> Path:
    """Write ``run_dir/interpretation/`` and return it; the folder is replaced as a whole.

    Per class ``CCC-name.png`` (grid of its features' averages, |weight| order) and folder
    ``CCC-name/`` with ``RRR-layer-cN.png`` (average) and ``RRR-layer-cN-crops.png`` (kept crops
    in a row, each shown at the averages' size) per feature; ``interpretation.json``
    (metadata: ``size`` of the averages, ``top_k`` the most crops averaged, ``settings``, and
    per class its features) and
    ``interpretation.safetensors`` (the exact tensors, read back by ``load_interpretations``).
    The JSON records the tensors' hash and ``relevance_sha256``, the fit they were made from.
    """
    from vebi.io.artifacts import file_hash

    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{INTERPRETATION_DIR}.", dir=run))
    try:
        tensors: dict[str, torch.Tensor] = {}
        classes = []
        for interp in interpretations:
            folder = grid_file(interp).removesuffix(".png")
            entries = []
            for rank, feat in enumerate(interp.features):
                stem = f"{folder}/{rank:03d}-{slug(feat.layer)}-c{feat.channel}"
                write_png(staging / f"{stem}.png", feat.average)
                key = f"feature{feat.index}"  # a feature relevant to several classes is stored once
                tensors[f"{key}.average"] = feat.average
                tensors[f"{key}.crops"] = feat.crops
                crops_png = None
                if feat.crops.shape[0]:
                    crops_png = f"{stem}-crops.png"
                    save_pil(staging / crops_png, crop_strip(feat.crops, int(feat.average.shape[-1])))
                entries.append({
                    "index": feat.index, "layer": feat.layer, "channel": feat.channel, "weight": feat.weight,
                    "receptive_field": list(feat.receptive_field), "count": feat.count,
                    "image_indices": list(feat.image_indices), "average": f"{stem}.png", "crops": crops_png,
                })
            grid = grid_file(interp)
            write_grid(staging / grid, interp)
            classes.append({"index": interp.class_index, "name": interp.class_name, "grid": grid, "features": entries})
        with atomic_path(staging / "interpretation.safetensors") as tmp:
            save_file({k: v.detach().to("cpu", torch.float32).contiguous() for k, v in tensors.items()}, str(tmp))
        sizes = {int(f.average.shape[-1]) for i in interpretations for f in i.features}
        meta = {"schema": SCHEMA_VERSION, "tensors_sha256": file_hash(staging / "interpretation.safetensors"),
                "relevance_sha256": relevance_sha256, "size": sizes.pop() if len(sizes) == 1 else None,
                "top_k": max((f.count for i in interpretations for f in i.features), default=0),
                "settings": dict(settings or {}), "classes": classes}
        write_text(staging / "interpretation.json", json.dumps(meta, indent=2) + "\n")
        target = run / INTERPRETATION_DIR
        replace_folder(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return target


def load_interpretations(run_dir: str | os.PathLike[str]) -> tuple[Interpretation, ...]:
    """The interpretations saved by ``save_interpretations`` under ``run_dir``."""
    folder = Path(run_dir) / INTERPRETATION_DIR
    meta_path = folder / "interpretation.json"
    from vebi.io.artifacts import check_made_from, check_pair, load_tensors, relevance_hash
    from vebi.io.folders import read_json

    meta = read_json(meta_path, "interpretations (run `vebi interpret` first)")
    check_pair(meta, meta_path, folder / "interpretation.safetensors")
    check_made_from(meta, "relevance_sha256", relevance_hash(run_dir), meta_path, "relevance fit", "vebi interpret")
    tensors = load_tensors(folder / "interpretation.safetensors")
    try:
        return _interpretations(meta, tensors, folder, meta_path)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        if isinstance(exc, VebiError):
            raise
        raise VebiError(f"{meta_path} has a missing or malformed entry ({exc!r}); re-run `vebi interpret`") from None


def _interpretations(meta: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], folder: Path,
                     meta_path: Path) -> tuple[Interpretation, ...]:
    result = []
    for cls in meta["classes"]:
        features = []
        for f in cls["features"]:
            key = f"feature{int(f['index'])}"
            if f"{key}.average" not in tensors:
                raise VebiError(f"{folder / 'interpretation.safetensors'} does not match {meta_path}")
            features.append(FeatureInterpretation(
                int(f["index"]), f["layer"], int(f["channel"]), float(f["weight"]),
                (int(f["receptive_field"][0]), int(f["receptive_field"][1])),
                tensors[f"{key}.average"], tensors[f"{key}.crops"], tuple(int(i) for i in f["image_indices"])))
        result.append(Interpretation(int(cls["index"]), cls["name"], tuple(features)))
    return tuple(result)


def grid_file(interpretation: Interpretation) -> str:
    """File name of a class's grid image inside the interpretation folder."""
    return f"{interpretation.class_index:03d}-{slug(interpretation.class_name)}.png"
