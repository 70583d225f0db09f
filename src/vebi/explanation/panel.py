"""A PNG panel of one explanation: the image with its prediction, the method's map, and per
feature its heatmap above its interpretation (when the run has one)."""

from __future__ import annotations

import io
from pathlib import Path

from torch import Tensor

from vebi.explanation.result import Explanation
from vebi.io.atomic import write_bytes

__all__ = ["write_panel"]


def write_panel(path: str | Path, image: Tensor, explanation: Explanation) -> None:
    """Write the panel of ``explanation`` for ``image`` (C, H, W) in [0, 1] to ``path`` atomically."""
    from matplotlib.figure import Figure
    from PIL import Image

    e = explanation
    links = [f.interpretation for f in e.features]
    rows = 2 if any(links) else 1
    columns = 2 + len(e.features)
    fig = Figure(figsize=(2.4 * columns, 2.6 * rows))
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    picture = image.clamp(0, 1).permute(1, 2, 0).numpy()
    grey = picture.shape[2] == 1
    axes[0, 0].imshow(picture[..., 0] if grey else picture[..., :3], cmap="gray" if grey else None)
    title = f"{e.predicted_name or e.predicted} ({e.score:.2f})"
    if e.target != e.predicted:
        title += f"\nexplaining {e.target_name}"
    axes[0, 0].set_title(title, fontsize=9)
    axes[0, 1].imshow(e.combined.numpy(), cmap="jet", vmin=0, vmax=1)
    axes[0, 1].set_title(f"{e.method}: combined" if e.features else e.method, fontsize=9)
    for i, f in enumerate(e.features):
        axes[0, 2 + i].imshow(f.heatmap.numpy(), cmap="jet", vmin=0, vmax=1)
        axes[0, 2 + i].set_title(f"{f.layer} c{f.channel}\nr={f.contribution:.3g} ({f.share:.0%})", fontsize=8)
        if links[i]:
            with Image.open(links[i]) as interp:
                axes[1, 2 + i].imshow(interp.convert("RGB"))
            axes[1, 2 + i].set_title("interpretation", fontsize=8)
    # fixed margins (tight_layout measured every text box: most of a panel's time); room above
    # each row for a two-line title
    title = 0.42 / (2.6 * rows)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - title, wspace=0.08, hspace=2.2 * title * rows)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    write_bytes(Path(path), buffer.getvalue())
