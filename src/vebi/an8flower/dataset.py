"""Write an an8Flower dataset: images, visible-part masks, a manifest and a train/test split.

Layout of ``root``::

    manifest.json                              every render parameter of every image (see below)
    images/{train,test}/NN-class/IIIIII.png    RGB images; ``images/train`` is an ImageFolder root
    masks/{train,test}/NN-class/IIIIII.png     L: 255 where a designated part is visible, else 0
    parts/{train,test}/NN-class/IIIIII.png     L: visible part per pixel, 0 background,
                                               1 centre, 2 petals, 3 stem, 4 leaves

Image ``i`` (``IIIIII`` = ``i`` zero-padded) belongs to class ``i mod C``; the first
``per_class - n_test`` images of each class are ``train``, the rest ``test``. Its parameters are
drawn from ``numpy.random.default_rng([seed, i])`` alone, so any subset of images, in any order
and in any number of processes, comes out byte-identical: that is what makes resuming safe.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import multiprocessing.pool
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from vebi.an8flower.meshes import PARTS
from vebi.an8flower.render import PART_LABELS, render
from vebi.an8flower.scene import RenderParams, render_threads, sample_params
from vebi.an8flower.variants import Variant, variant_from_dict
from vebi.io.atomic import atomic_path, write_text
from vebi.errors import VebiError

FORMAT = "vebi-an8flower"
FORMAT_VERSION = 1
TREES = ("images", "masks", "parts")


@dataclass(frozen=True)
class DatasetConfig:
    """What to generate: variant, images per class (train + test), image side, seed, split, samples per pixel."""

    variant: Variant
    per_class: int = 500
    size: int = 112
    seed: int = 0
    test_fraction: float = 0.2
    spp: int = 9

    def __post_init__(self) -> None:
        if self.per_class < 2:
            raise VebiError(f"per_class must be at least 2 (one train and one test image), got {self.per_class}")
        if not 8 <= self.size <= 2048:
            raise VebiError(f"size must be between 8 and 2048 pixels, got {self.size}")
        if not 0.0 < self.test_fraction < 1.0:
            raise VebiError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        if not 1 <= self.spp <= 4096 or round(self.spp**0.5) ** 2 != self.spp:
            raise VebiError(f"spp must be a square number (1, 4, 9, 16, ...) up to 4096, got {self.spp}")

    @property
    def test_per_class(self) -> int:
        return min(self.per_class - 1, max(1, round(self.per_class * self.test_fraction)))

    def to_dict(self) -> dict:
        return {
            "variant": self.variant.to_dict(),
            "per_class": self.per_class,
            "size": self.size,
            "seed": self.seed,
            "test_fraction": self.test_fraction,
            "spp": self.spp,
            "renderer": f"mitsuba {version('mitsuba')} scalar_rgb",
        }


@dataclass(frozen=True)
class ImageRecord:
    """One image of the dataset: where its files go and the parameters that render it."""

    index: int
    split: str
    class_name: str
    params: RenderParams

    def path(self, tree: str) -> str:
        """Path relative to the dataset root in ``tree`` (one of ``images``, ``masks``, ``parts``)."""
        return f"{tree}/{self.split}/{self.class_name}/{self.index:06d}.png"

    def to_dict(self) -> dict:
        return {
            "index": self.index,
            "split": self.split,
            "class": self.class_name,
            "image": self.path("images"),
            "mask": self.path("masks"),
            "parts": self.path("parts"),
            "params": self.params.to_dict(),
        }


@dataclass(frozen=True)
class GenerateResult:
    """Outcome of :func:`generate`: the root, how many images were rendered now and how many were already there."""

    root: Path
    total: int
    rendered: int
    skipped: int
    seconds: float


def plan(config: DatasetConfig) -> list[ImageRecord]:
    """Every image of the dataset with its parameters (cheap: nothing is rendered)."""
    classes = config.variant.class_names
    n_train = config.per_class - config.test_per_class
    records = []
    for index in range(config.per_class * len(classes)):
        label, k = index % len(classes), index // len(classes)
        params = sample_params(config.variant, label, np.random.default_rng([config.seed, index]))
        records.append(ImageRecord(index, "train" if k < n_train else "test", classes[label], params))
    return records


def manifest(config: DatasetConfig, records: list[ImageRecord]) -> dict:
    """The manifest: format, configuration, label conventions and every image's record."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": config.to_dict(),
        "classes": list(config.variant.class_names),
        "designated": list(config.variant.designated),
        "parts": list(PARTS),
        "part_labels": {"background": 0, **PART_LABELS},
        "layout": {
            "images": "images/{split}/{class}/{index:06d}.png  RGB",
            "masks": "masks/{split}/{class}/{index:06d}.png  L, 255 = a designated part is visible",
            "parts": "parts/{split}/{class}/{index:06d}.png  L, visible part label (part_labels)",
        },
        "images": [r.to_dict() for r in records],
    }


def read_manifest(root: str | os.PathLike[str]) -> dict:
    """The manifest of the dataset at ``root``."""
    path = Path(root) / "manifest.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise VebiError(f"{root} is not an an8Flower dataset: {path} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VebiError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise VebiError(f"{path} is not an an8Flower manifest")
    return data


def config_from_manifest(data: dict) -> DatasetConfig:
    """The :class:`DatasetConfig` recorded in a manifest."""
    c = data["config"]
    return DatasetConfig(
        variant_from_dict(c["variant"]), c["per_class"], c["size"], c["seed"], c["test_fraction"], c["spp"]
    )


def mask_path(image_path: str | os.PathLike[str], tree: str = "masks") -> Path:
    """The mask (``masks``) or label map (``parts``) file of an image file of the dataset."""
    path = Path(image_path)
    parts = list(path.parts)
    if len(parts) < 4 or parts[-4] != "images":
        raise VebiError(f"{image_path} is not inside an an8Flower 'images/<split>/<class>/' folder")
    parts[-4] = tree
    return Path(*parts)


def load_mask(path: str | os.PathLike[str]) -> np.ndarray:
    """A designated-part mask file as a boolean (H, W) array."""
    return np.asarray(Image.open(path)) > 127


def load_part_masks(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """A label-map file (``parts`` tree) as one boolean (H, W) mask per part."""
    labels = np.asarray(Image.open(path))
    return {part: labels == value for part, value in PART_LABELS.items()}


def _is_done(root: Path, record: ImageRecord) -> bool:
    return all((root / record.path(tree)).is_file() for tree in TREES)


def _save_png(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def render_record(root: Path, record: ImageRecord, size: int, spp: int, designated: tuple[str, ...]) -> int:
    """Render one record and write its three files (image last, each atomically)."""
    result = render(record.params, size, spp)
    _save_png(root / record.path("parts"), result.labels)
    _save_png(root / record.path("masks"), np.where(result.mask(designated), 255, 0).astype(np.uint8))
    _save_png(root / record.path("images"), result.image)
    return record.index


def _init_worker() -> None:
    import drjit as dr
    import mitsuba as mi

    mi.set_variant("scalar_rgb")
    dr.set_thread_count(1)  # one process per core


def _work(task: tuple[str, dict, int, int, tuple[str, ...]]) -> int:
    root, record, size, spp, designated = task
    rec = ImageRecord(record["index"], record["split"], record["class"], RenderParams.from_dict(record["params"]))
    return render_record(Path(root), rec, size, spp, designated)


def _remove_leftovers(root: Path) -> None:
    """Delete temporary files of an interrupted run (they would look like images to ImageFolder)."""
    for tree in TREES:
        for tmp in (root / tree).glob("*/*/.*.tmp.png"):
            tmp.unlink()


def generate(
    root: str | os.PathLike[str], config: DatasetConfig, *, workers: int = 2, progress: bool = True
) -> GenerateResult:
    """Render the dataset ``config`` into ``root``, resuming a previous run of the same config.

    Images whose three files exist are not rendered again. A ``root`` holding a manifest of a
    different configuration is refused rather than mixed.
    """
    start = time.perf_counter()
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise VebiError(f"output {root} exists and is not a directory")
    manifest_path = root / "manifest.json"
    if manifest_path.exists():
        if read_manifest(root).get("config") != config.to_dict():
            raise VebiError(
                f"{root} holds an an8Flower dataset with a different configuration; choose another output folder"
            )
    elif root.exists() and any(root.iterdir()):
        raise VebiError(f"output folder {root} is not empty and has no an8Flower manifest")
    root.mkdir(parents=True, exist_ok=True)
    with _render_pool(workers) as pool:  # the workers start up while this process draws the plan
        records = plan(config)
        write_text(manifest_path, json.dumps(manifest(config, records), separators=(",", ":")) + "\n")
        _remove_leftovers(root)
        pending = [r for r in records if not _is_done(root, r)]
        skipped = len(records) - len(pending)
        bar = tqdm(total=len(records), initial=skipped, unit="img", desc="an8flower", disable=not progress)
        try:
            if pool is None or len(pending) <= 1:
                with render_threads(1):  # one worker: one core, as asked
                    for record in pending:
                        render_record(root, record, config.size, config.spp, config.variant.designated)
                        bar.update()
            else:
                tasks = [(str(root), r.to_dict(), config.size, config.spp, config.variant.designated) for r in pending]
                for _ in pool.imap_unordered(_work, tasks, chunksize=4):
                    bar.update()
        finally:
            bar.close()
    return GenerateResult(root, len(records), len(pending), skipped, time.perf_counter() - start)


@contextlib.contextmanager
def _render_pool(workers: int) -> Iterator[multiprocessing.pool.Pool | None]:
    """``workers`` spawned render processes (None for one worker: render in this process)."""
    if workers <= 1:
        yield None
        return
    with multiprocessing.get_context("spawn").Pool(workers, initializer=_init_worker) as pool:
        yield pool
