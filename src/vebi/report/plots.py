"""The report's own plots (matplotlib, Agg canvas, no global pyplot state), returned as PNG bytes."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure

from vebi.core.relevance import Relevance
from vebi.report.collect_run import ClassView

__all__ = ["relevant_counts_png", "weights_png"]

_DPI = 110
_LAYER_COLORS = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C",
                 "#CCB974", "#64B5CD")


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
    for k, layer in enumerate(layers):
        if counts[:, k].any():
            ax.barh(y, counts[:, k], left=left, color=_LAYER_COLORS[k % len(_LAYER_COLORS)], label=_short(layer, 20),
                    height=0.7)
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
        ax.legend(title="layer", fontsize=7, title_fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0),
                  frameon=False)
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
    ax.set_xticks(centres, [_short(layers[k].rsplit(".", 1)[-1], 14) for k in starts], fontsize=7, rotation=35,
                  ha="right", rotation_mode="anchor")
    for label, k in zip(ax.get_xticklabels(), starts, strict=True):
        position = relevance.space.layers.index(layers[k])
        label.set_color(_LAYER_COLORS[position % len(_LAYER_COLORS)])
    ax.set_xlabel(f"{len(union)} features relevant to some class, by layer", fontsize=8)
    fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02).ax.tick_params(labelsize=7)
    return _png(fig)
