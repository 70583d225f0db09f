"""The report's own plots (matplotlib, Agg canvas, no global pyplot state), returned as PNG bytes."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import TwoSlopeNorm, to_hex
from matplotlib.figure import Figure

from vebi.core.relevance import Relevance
from vebi.report.collect_run import ClassView
from vebi.report.verdict import IoUCurve, plural

__all__ = ["iou_png", "layer_colors", "relevant_counts_png", "weights_png"]

_DPI = 110
MAX_LABELS = 36  # layer labels along the weights plot's axis; more would overlap


def layer_colors(n: int) -> list[str]:
    """``n`` distinct colours: tab10 up to 10 layers, else the perceptual colormap viridis sampled evenly
    (neighbouring layers get neighbouring colours, all different)."""
    if n <= 10:
        return [to_hex(colormaps["tab10"](k)) for k in range(n)]
    return [to_hex(colormaps["viridis"](x)) for x in np.linspace(0.0, 0.95, n)]


def _short(text: str, n: int = 28) -> str:
    return text if len(text) <= n else text[: n - 1] + "\u2026"


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, metadata={"Software": None})
    return buf.getvalue()


def relevant_counts_png(classes: Sequence[ClassView], layers: Sequence[str]) -> bytes:
    """Horizontal bars: per class the number of relevant features, stacked by layer."""
    n = len(classes)
    fig = Figure(figsize=(6.4, 0.9 + 0.32 * max(n, 2)), layout="constrained")
    ax = fig.add_subplot()
    counts = np.array([[sum(f.layer == layer for f in c.features) for layer in layers] for c in classes],
                      dtype=float).reshape(n, len(layers))
    y = np.arange(n)
    left = np.zeros(n)
    colors = layer_colors(len(layers))
    for k, layer in enumerate(layers):
        if counts[:, k].any():
            ax.barh(y, counts[:, k], left=left, color=colors[k], label=_short(layer, 20), height=0.7)
            left += counts[:, k]
    for yi, total in zip(y, left, strict=True):
        ax.text(total, yi, f" {int(total)}", va="center", fontsize=8)
    ax.set_yticks(y, [_short(c.name) for c in classes], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("relevant features (non-zero weights)", fontsize=9)
    ax.set_xlim(0, max(float(left.max()) if n else 0.0, 1.0) * 1.12)
    ax.spines[["top", "right"]].set_visible(False)
    ax.tick_params(axis="x", labelsize=8)
    if counts.any():
        shown = int((counts.sum(0) > 0).sum())
        ax.legend(title="layer", fontsize=7, title_fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0),
                  frameon=False, ncols=1 + (shown - 1) // max(2 * max(n, 2), 12))
    return _png(fig)


def weights_png(relevance: Relevance) -> bytes | None:
    """Heatmap of the weights W over the features relevant to some class (columns, in feature order)."""
    union = list(relevance.union())
    if not union:
        return None
    w = relevance.weights[union].detach().cpu().double().numpy().T  # (C, |union|)
    limit = float(np.abs(w).max()) or 1.0
    c = w.shape[0]
    fig = Figure(figsize=(min(max(5.6, 2.4 + 0.06 * len(union)), 9.5), 1.3 + 0.3 * max(c, 2)), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(w, aspect="auto", cmap="RdBu_r", norm=TwoSlopeNorm(0.0, -limit, limit), interpolation="nearest")
    ax.set_yticks(np.arange(c), [_short(n) for n in relevance.class_names], fontsize=8)
    layers = [relevance.space.feature(i).layer for i in union]
    starts = [k for k in range(len(union)) if k == 0 or layers[k] != layers[k - 1]]
    ends = starts[1:] + [len(union)]
    for k in starts[1:]:
        ax.axvline(k - 0.5, color="#333333", linewidth=0.8)
    centres = [(a + b - 1) / 2 for a, b in zip(starts, ends, strict=True)]
    labelled = _spaced(centres, len(union) / MAX_LABELS)
    ax.set_xticks([centres[k] for k in labelled],
                  [_short(_unprefixed(relevance.space.layers)[layers[starts[k]]], 16) for k in labelled], fontsize=7,
                  rotation=35,
                  ha="right", rotation_mode="anchor")
    colors = layer_colors(len(relevance.space.layers))
    for label, k in zip(ax.get_xticklabels(), labelled, strict=True):
        label.set_color(colors[relevance.space.layers.index(layers[starts[k]])])
    hidden = len(starts) - len(labelled)
    ax.set_xlabel(f"{len(union)} features relevant to some class, by layer"
                  + (f" ({hidden} narrow layer labels left out)" if hidden else ""), fontsize=8)
    fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02).ax.tick_params(labelsize=7)
    return _png(fig)


def _unprefixed(names: Sequence[str]) -> dict[str, str]:
    """Each layer name without the dotted prefix all names share ("features.3.conv.1" -> "3.conv.1")."""
    parts = [n.split(".") for n in names]
    common = 0
    while len(names) > 1 and all(len(p) > common + 1 and p[common] == parts[0][common] for p in parts):
        common += 1
    return {n: ".".join(p[common:]) for n, p in zip(names, parts, strict=True)}


def _spaced(positions: Sequence[float], gap: float) -> list[int]:
    """Indices of ``positions`` (increasing) kept so that kept neighbours are at least ``gap`` apart."""
    kept: list[int] = []
    for k, x in enumerate(positions):
        if not kept or x - positions[kept[-1]] >= gap:
            kept.append(k)
    return kept


def iou_png(curves: Sequence[IoUCurve]) -> bytes | None:
    """IoU vs threshold: vebi and the best baseline drawn strong, every other method faded grey."""
    vebi = next((c for c in curves if c.method == "vebi"), None)
    baselines = [c for c in curves if not c.method.startswith("vebi")]
    best = max(baselines, key=lambda c: c.score, default=None)
    if vebi is None and best is None:
        return None
    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    ax = fig.add_subplot()
    faded = [c for c in curves if c is not vebi and c is not best]
    for k, c in enumerate(faded):
        ax.plot(c.thresholds, c.mean, color="#b8bec8", lw=1.0, zorder=1,
                label=f"{plural(len(faded), 'other method')} (each a grey line)" if k == 0 else None)
    if best is not None:
        ax.plot(best.thresholds, best.mean, color="#dd8452", lw=2.2, zorder=2,
                label=f"best baseline: {_short(best.method)} ({best.score:.3g})")
    if vebi is not None:
        ax.plot(vebi.thresholds, vebi.mean, color="#1d2330", lw=2.6, zorder=3, label=f"vebi ({vebi.score:.3g})")
    ax.set_xlabel("threshold on the [0, 1] heatmap", fontsize=9)
    ax.set_ylabel("mean IoU with the mask", fontsize=9)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    ax.tick_params(labelsize=8)
    ax.legend(fontsize=9, title="method (mean IoU over thresholds)", title_fontsize=8, frameon=False)
    return _png(fig)
