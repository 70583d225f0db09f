"""Writing the report: one static HTML page plus a folder of images beside it.

``out.html`` refers to its images as ``out_files/...`` (relative links), so the page opens from
disk without a server and the pair can be moved or zipped together. Images of the run are
copied (PNG/JPEG/GIF/WebP up to ``MAX_SIDE`` pixels) or re-encoded as PNG thumbnails (other
formats, larger images); heatmaps are drawn blended over the image they explain (``add_overlay``),
and alone for the link behind it; the report's own plots are drawn with matplotlib. The image folder is
built under a temporary name and swapped in, then the page is written atomically. All text
from the run (class names, file names, layer names) is escaped by jinja2's autoescaping; image
file names in the folder are chosen here, never taken from the user's data.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from urllib.parse import quote

import numpy as np
import torch
from jinja2 import Environment, PackageLoader, StrictUndefined
from matplotlib import colormaps
from matplotlib.colors import to_hex
from markupsafe import Markup
from PIL import Image, ImageOps
from safetensors.torch import load_file
from tqdm.auto import tqdm

from vebi import __version__
from vebi.interpretation.drawing import colored, save_pil
from vebi.io.atomic import replace_folder, write_text
from vebi.errors import VebiError
from vebi.report import plots
from vebi.report.collect_run import MapRef, Picture, ReportData, collect_run
from vebi.report.verdict import plural

__all__ = ["Report", "build_report", "default_output", "write_report"]

MAX_SIDE = 1024
MARKER = ".vebi-report"
HEATMAP_COLORMAP = "turbo"  # jet's hues, perceptually ordered
OVERLAY_ALPHA = (0.15, 0.7)  # opacity of the colour over the image at heat 0 and at heat 1
_COPY_FORMATS = {"PNG": ".png", "JPEG": ".jpg", "GIF": ".gif", "WEBP": ".webp"}


@dataclass(frozen=True)
class Report:
    """The written page, the folder of its images, and what was left out (one sentence each)."""

    path: Path
    assets: Path
    warnings: tuple[str, ...]


def default_output(run_dir: str | Path) -> Path:
    return Path(run_dir) / "report" / "index.html"


def build_report(run_dir: str | Path, out: str | Path | None = None, *, explanations_dir: str | Path | None = None,
                 evaluation_dir: str | Path | None = None, max_features: int = 60, max_explanations: int = 12,
                 max_crops: int = 16, progress: bool = True) -> Report:
    """Read the run folder and write its report to ``out`` (default ``RUN/report/index.html``)."""
    if min(max_features, max_explanations, max_crops) < 1:
        raise VebiError("max_features, max_explanations and max_crops must be at least 1")
    data = collect_run(run_dir, explanations_dir=explanations_dir, evaluation_dir=evaluation_dir,
                       max_explanations=max_explanations)
    return write_report(data, default_output(run_dir) if out is None else out, max_features=max_features,
                        max_crops=max_crops, progress=progress)


def write_report(data: ReportData, out: str | Path, *, max_features: int = 60, max_crops: int = 16,
                 progress: bool = True) -> Report:
    """Render ``data`` to the HTML file ``out`` (a folder: ``out/index.html``) and its ``<stem>_files``."""
    page = Path(out)
    if page.is_dir():
        page = page / "index.html"
    folder = page.with_name(f"{page.stem}_files")
    if page.exists() and not (folder / MARKER).is_file():
        raise VebiError(f"{page} exists and is not a page written by `vebi report`; choose another -o")
    if folder.exists() and not (folder / MARKER).is_file():
        raise VebiError(f"{folder} exists and was not written by `vebi report`; move it or choose another -o")
    page.parent.mkdir(parents=True, exist_ok=True)
    warnings = list(data.warnings)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=page.parent))
    umask = _umask()
    try:
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the report is as readable as any new folder
        (tmp / MARKER).write_text("images of the report beside this folder; rewritten by `vebi report`\n")
        assets = _Assets(tmp, quote(folder.name), warnings)
        figures = _add_images(data, assets, max_features, max_crops, progress)
        html = _render(data, assets, figures, max_features, max_crops, warnings)
        replace_folder(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    write_text(page, html)
    page.chmod(0o666 & ~umask)
    return Report(page.resolve(), folder.resolve(), tuple(warnings))


# --------------------------------------------------------------------------- images


class _Assets:
    """Images placed in the report's folder, each source once, under names given by the caller."""

    def __init__(self, folder: Path, prefix: str, warnings: list[str]) -> None:
        self.folder, self.prefix, self.warnings = folder, prefix, warnings
        self.urls: dict[Picture, str | None] = {}
        self.overlays: dict[tuple[MapRef, Path], str | None] = {}
        self.names: set[str] = set()
        self._maps: dict[Path, dict[str, torch.Tensor]] = {}

    def add(self, source: Picture | None, name: str) -> None:
        if source is None or source in self.urls:
            return
        base, n = name, 1
        while name in self.names:  # another source asked for the same name
            n += 1
            name = f"{base}-{n}"
        self.names.add(name)
        if isinstance(source, MapRef):
            self._add_map(source, name)
            return
        try:
            with Image.open(source) as img:
                fmt, size = img.format, img.size
                img.verify()
            suffix = _COPY_FORMATS.get(fmt or "")
            if suffix and max(size) <= MAX_SIDE:
                shutil.copyfile(source, self.folder / f"{name}{suffix}")
            else:
                suffix = ".png"
                with Image.open(source) as img:
                    img = ImageOps.exif_transpose(img)
                    img = img.convert("RGBA" if "A" in img.getbands() else "RGB")
                    img.thumbnail((MAX_SIDE, MAX_SIDE))
                    save_pil(self.folder / f"{name}{suffix}", img)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            self.warnings.append(f"{source} is not a readable image ({exc}); left out")
            self.urls[source] = None
            return
        self.urls[source] = f"{self.prefix}/{name}{suffix}"

    def _heat(self, source: MapRef) -> np.ndarray | None:
        """The heatmap h (H, W) in [0, 1] of ``source``, or None (with a warning) when it is not 2-D."""
        if source.path not in self._maps:
            self._maps[source.path] = load_file(str(source.path))
        heat = self._maps[source.path][source.key].detach().float().squeeze()
        if heat.dim() != 2:
            self.warnings.append(f"{source.key} in {source.path} is not a 2-D map; left out")
            return None
        return heat.nan_to_num(0.0).clamp(0, 1).numpy()

    def _add_map(self, source: MapRef, name: str) -> None:
        """Draw heatmap h (H, W) in [0, 1] with ``HEATMAP_COLORMAP``."""
        heat = self._heat(source)
        if heat is None:
            self.urls[source] = None
            return
        save_pil(self.folder / f"{name}.png", colored(heat, HEATMAP_COLORMAP))
        self.urls[source] = f"{self.prefix}/{name}.png"

    def add_overlay(self, source: MapRef | None, image: Path | None, name: str) -> None:
        """Blend the heatmap over the image the model saw: out = (1 - a) image + a colour(h), a = a0 + (a1 - a0) h.

        The image is resized (shorter side) and centre-cropped to the map's size, as the model's input
        transform does; the raw map is drawn too (the overlay links to it).
        """
        if source is None or image is None or (source, image) in self.overlays:
            return
        self.add(source, f"{name}_raw")
        heat = self._heat(source) if self.urls.get(source) else None
        if heat is None or self.urls.get(image, "") is None:
            self.overlays[(source, image)] = None
            return
        try:
            with Image.open(image) as img:
                base = ImageOps.fit(ImageOps.exif_transpose(img).convert("RGB"), (heat.shape[1], heat.shape[0]))
        except (OSError, SyntaxError, ValueError):
            self.overlays[(source, image)] = None  # the input's own job warns about it
            return
        low, high = OVERLAY_ALPHA
        alpha = (low + (high - low) * heat)[..., None]
        color = colormaps[HEATMAP_COLORMAP](heat)[..., :3]
        blend = (1 - alpha) * np.asarray(base, dtype=np.float64) / 255 + alpha * color
        save_pil(self.folder / f"{name}.png", Image.fromarray(np.round(255 * blend).astype(np.uint8)))
        self.overlays[(source, image)] = f"{self.prefix}/{name}.png"

    def add_png(self, data: bytes, name: str) -> str:
        (self.folder / f"{name}.png").write_bytes(data)
        return f"{self.prefix}/{name}.png"

    def url(self, source: Picture | None) -> str | None:
        return None if source is None else self.urls.get(source)

    def overlay(self, source: Picture | None, image: Path | None) -> str | None:
        return self.overlays.get((source, image)) if isinstance(source, MapRef) and image is not None else None


def _add_images(data: ReportData, assets: _Assets, max_features: int, max_crops: int,
                progress: bool) -> dict[str, str]:
    """Copy every image the page shows; draw the report's own plots. Returns the plots' URLs."""
    for sub in ("features", "explanations", "evaluation", "plots"):
        (assets.folder / sub).mkdir()
    jobs: list[tuple[Path | None, str]] = []
    for c in data.classes:
        for f in c.features[:max_features]:
            jobs.append((f.average, f"features/f{f.index:06d}"))
            jobs += [(p, f"features/f{f.index:06d}_crop{k:03d}") for k, p in enumerate(f.crops[:max_crops])]
    overlays: list[tuple[MapRef, Path, str]] = []
    for n, e in enumerate(data.explanations):
        stem = f"explanations/{n:03d}"
        maps = [(e.combined, f"{stem}_combined")] + [(f.heatmap, f"{stem}_heatmap{k:02d}")
                                                     for k, f in enumerate(e.features)]
        maps += [(path, f"{stem}_baseline{k:02d}") for k, (_, path) in enumerate(e.baselines)]
        jobs += [(e.image, f"{stem}_input"), (e.panel, f"{stem}_panel")]
        jobs += [(f.interpretation, f"features/f{f.index:06d}") for f in e.features]
        for source, name in maps:
            if isinstance(source, MapRef) and e.image is not None:
                overlays.append((source, e.image, name))
            else:
                jobs.append((source, name))
    if data.evaluation is not None:
        jobs += [(fig.path, f"evaluation/{g.key}{k:02d}") for g in data.evaluation.groups
                 for k, fig in enumerate(g.figures)]
    for source, name in tqdm(jobs, desc="report images", unit="image", disable=not progress):
        assets.add(source, name)
    for source, image, name in tqdm(overlays, desc="report heatmaps", unit="map", disable=not progress or not overlays):
        assets.add_overlay(source, image, name)
    figures = {}
    if data.classes:
        figures["counts"] = assets.add_png(plots.relevant_counts_png(data.classes, [v.name for v in data.layers]),
                                           "plots/relevant_counts")
        weights = plots.weights_png(data.relevance) if data.relevance is not None else None
        if weights is not None:
            figures["weights"] = assets.add_png(weights, "plots/weights")
    iou = plots.iou_png(data.evaluation.iou_curves) if data.evaluation is not None else None
    if iou is not None:
        figures["iou"] = assets.add_png(iou, "plots/iou")
    return figures


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# --------------------------------------------------------------------------- HTML


def _environment() -> Environment:
    env = Environment(loader=PackageLoader("vebi.report", "templates"), autoescape=True, undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters["signed"] = lambda x: "" if x is None else f"{x:+.3g}"
    env.filters["num"] = lambda x: "" if x is None else f"{x:.3g}"
    env.filters["pct"] = lambda x: "" if x is None else f"{100 * x:.1f} %"
    env.filters["plural"] = plural
    return env


def colorbar_css(steps: int = 11) -> str:
    """A CSS gradient of ``HEATMAP_COLORMAP`` from 0 (left) to 1 (right), for the page's colour bar."""
    colors = [to_hex(colormaps[HEATMAP_COLORMAP](x)) for x in np.linspace(0, 1, steps)]
    return f"linear-gradient(to right, {', '.join(colors)})"


def _render(data: ReportData, assets: _Assets, figures: dict[str, str], max_features: int, max_crops: int,
            warnings: list[str]) -> str:
    css = resources.files("vebi.report").joinpath("templates", "report.css").read_text(encoding="utf-8")
    template = _environment().get_template("report.html.j2")
    script = resources.files("vebi.report").joinpath("templates", "report.js").read_text(encoding="utf-8")
    return template.render(data=data, url=assets.url, overlay=assets.overlay, figures=figures,
                           max_features=max_features, max_crops=max_crops, warnings=warnings, css=Markup(css),
                           script=Markup(script), colorbar=colorbar_css(), version=__version__,
                           run_name=data.run_dir.name)
