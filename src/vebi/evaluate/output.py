"""Writing an :class:`~vebi.evaluate.runner.EvaluationResult`: results.json, CSV tables, PNG plots.

Files (all written atomically)::

    results.json                    every number (``EvaluationResult.to_dict``) plus the lists
                                    "tables" and "figures" that ``vebi report`` shows
    timings.json                    seconds per method and for the ablation (not reproducible)
    scores.csv                      one row per method: headline scores (MethodScores.summary_row);
                                    this and the other per-method files only when a method was evaluated
    iou_summary.csv                 per method and image subset (correct / wrong / all): IoU, best
                                    threshold, pointing, mass in mask        (with masks)
    iou_curves.csv                  per method, subset and threshold: mean IoU and 95 % interval
    iou_vs_threshold.png            IoU vs threshold per method, correct (and wrong) images
    per_image.csv                   per method and image: IoU (mean over thresholds, at the method's
                                    best threshold), pointing, mass in mask (paired comparisons)
    deletion_insertion_curves.csv   per method and step: mean class probability
    deletion_insertion.png          the two curves per method
    ablation_summary.csv            per class (and their mean): its positive, negative and reference
                                    sets ablated whole (k = n), the class's accuracy and the other
                                    classes', the layer-matched controls' mean and 95 % interval
    ablation_sets.csv               per class, set and k: the same (AblationResult.rows; every k with
                                    ``ablation_curves``, else k = n)
    ablation.png                    per class: accuracy before and with each set / its controls ablated
    ablation_curves.png             per class: class accuracy vs k          (with ``ablation_curves``)
    ablation_union.csv              union of all relevant features vs layer-matched random sets
    sanity_<kind>.csv               per method and randomisation step: Spearman and SSIM to the
                                    trained model's maps (kind: cascading, data; SanityResult.rows)
    sanity_<kind>.png               the same, one line per method (cascading: vs layers randomised)
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vebi.evaluate.ablation import AblationResult, UnionAblationResult
from vebi.io.atomic import write_bytes, write_text
from vebi.evaluate.runner import SUBSETS, EvaluationResult
from vebi.evaluate.sanity import SanityResult

__all__ = ["format_ablation", "format_sanity", "format_summary", "write_evaluation"]


def _clean(value: Any) -> Any:
    """JSON without NaN/inf (they become null)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _csv_text(rows: Sequence[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    columns = list(dict.fromkeys(k for row in rows for k in row))
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else _number(row.get(k)) for k in columns})
    return buffer.getvalue()


def _number(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value


def _figure_bytes(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    return buffer.getvalue()


def _style(name: str, i: int) -> dict[str, Any]:
    """vebi black, its single-feature maps grey dashed, vebi_nofix grey dotted, baselines in colour."""
    from matplotlib import colormaps

    if name == "vebi":
        return {"color": "black", "lw": 2.4}
    if name.startswith("vebi_feature"):
        rank = int(name.removeprefix("vebi_feature") or 1)
        return {"color": str(min(0.25 + 0.15 * rank, 0.8)), "ls": "--", "lw": 1.0}
    if name == "vebi_nofix":
        return {"color": "0.35", "ls": ":", "lw": 1.8}
    return {"color": colormaps["tab10"](i % 10), "lw": 1.4}


# ----------------------------------------------------------------------------- tables


def _localization_rows(result: EvaluationResult) -> tuple[list[dict], list[dict]]:
    summary, curves = [], []
    for m in result.methods:
        for subset in SUBSETS:
            loc = m.localization(subset)
            if loc is None:
                continue
            summary.append({"method": m.name, "subset": subset, **loc.summary_row()})
            curves += [{"method": m.name, "subset": subset, **row} for row in loc.iou.curve_rows()]
    return summary, curves


def _faithfulness_rows(result: EvaluationResult) -> list[dict]:
    return [{"method": m.name, **row} for m in result.methods for row in m.faithfulness.curve_rows()]


# ----------------------------------------------------------------------------- plots


def _iou_plot(result: EvaluationResult) -> bytes:
    from matplotlib.figure import Figure

    subsets = [s for s in ("correct", "wrong") if any(m.localization(s) is not None for m in result.methods)]
    fig = Figure(figsize=(6.4 * len(subsets), 4.6))
    axes = fig.subplots(1, len(subsets), squeeze=False)[0]
    for ax, subset in zip(axes, subsets, strict=True):
        for i, m in enumerate(result.methods):
            loc = m.localization(subset)
            if loc is None:
                continue
            t = list(loc.iou.thresholds)
            mean = [e.mean for e in loc.iou.curve]
            style = _style(m.name, i)
            ax.plot(t, mean, label=f"{m.name} ({loc.iou.mean_over_thresholds.mean:.3f})", **style)
            if all(e.low is not None for e in loc.iou.curve):
                ax.fill_between(t, [e.low for e in loc.iou.curve], [e.high for e in loc.iou.curve],
                                color=style["color"], alpha=0.12, lw=0)
        n = next(m.localization(subset).images for m in result.methods if m.localization(subset) is not None)
        ax.set(xlabel="threshold on the [0, 1] heatmap", ylabel="mean IoU with the mask", ylim=(0, 1),
               title=f"{subset}ly classified images (n = {n})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, title="method (mean over thresholds)", title_fontsize=7)
    fig.tight_layout()
    return _figure_bytes(fig)


def _faithfulness_plot(result: EvaluationResult) -> bytes:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12.8, 4.6))
    axes = fig.subplots(1, 2)
    for i, m in enumerate(result.methods):
        f = m.faithfulness
        style = _style(m.name, i)
        axes[0].plot(f.fractions, [e.mean for e in f.deletion_curve], label=f"{m.name} ({f.deletion_auc.mean:.3f})",
                     **style)
        axes[1].plot(f.fractions, [e.mean for e in f.insertion_curve],
                     label=f"{m.name} ({f.insertion_auc.mean:.3f})", **style)
    for ax, what, better in ((axes[0], "deletion", "lower"), (axes[1], "insertion", "higher")):
        ax.set(xlabel=f"fraction of pixels {'removed' if what == 'deletion' else 'inserted'} (heatmap order)",
               ylabel="probability of the explained class", ylim=(0, 1),
               title=f"{what} (AUC in the legend; {better} is better)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _figure_bytes(fig)


_SET_STYLE = {"positive": ("black", "positive set"), "negative": ("tab:red", "negative set"),
              "reference": ("tab:orange", "reference (last layer)")}


def error_bar(value: float, interval: tuple[float, float] | None) -> tuple[float, float]:
    """Lengths below and above ``value`` of its interval's bar, never negative: a mean of equal
    values may lie an ulp outside the percentile interval of those values."""
    if interval is None:
        return 0.0, 0.0
    return max(value - interval[0], 0.0), max(interval[1] - value, 0.0)


def _ablation_plot(result: EvaluationResult) -> bytes:
    """Grouped bars per class: accuracy before, with each set ablated and with its controls
    (error bars: 95 % interval over seeds); crosses: the other classes' mean accuracy."""
    from matplotlib.figure import Figure

    ab = result.ablation
    assert ab is not None
    bars = [("before", "0.75", None), ("positive", "black", None), ("positive", "tab:blue", "control"),
            ("negative", "tab:red", None), ("negative", "lightsteelblue", "control"), ("reference", "tab:orange", None)]
    labels = ["before", "positive set", "its controls", "negative set", "its controls", "reference (last layer)"]
    width = 0.8 / len(bars)
    fig = Figure(figsize=(max(6.4, 1.0 * len(ab.classes) + 2.0), 4.2))
    ax = fig.subplots()
    for b, ((kind, color, control), label) in enumerate(zip(bars, labels, strict=True)):
        xs, own, others, low, high = [], [], [], [], []
        for c in ab.classes:
            x = c.class_index + (b - (len(bars) - 1) / 2) * width
            if kind == "before":
                value, other, interval = c.baseline_class_accuracy, c.baseline_other_accuracy, None
            else:
                s = next(s for s in c.sets() if s.kind == kind)
                if control is None:
                    value, other, interval = s.class_accuracy[-1], s.other_accuracy[-1], None
                elif s.control_class is None:
                    continue
                else:
                    spread = s.control_class[-1]
                    value, other, interval = spread.mean, s.control_other[-1].mean, (spread.low, spread.high)
            xs.append(x)
            own.append(value)
            others.append(other)
            down, up = error_bar(value, interval)
            low.append(down)
            high.append(up)
        ax.bar(xs, own, width, color=color, label=label, yerr=[low, high] if control else None, capsize=2)
        ax.plot(xs, others, "x", color="0.3", ms=4, label="other classes" if b == 0 else None)
    ax.set_xticks(range(len(ab.classes)), [c.class_name for c in ab.classes], rotation=30, ha="right", fontsize=8)
    ax.set(ylim=(0, 1.3), yticks=[0, 0.2, 0.4, 0.6, 0.8, 1.0], ylabel="accuracy of the class")
    ax.set_title(f"Whole sets ablated; controls: {len(ab.seeds)} layer-matched random sets", fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7, ncol=4, loc="upper center")
    fig.tight_layout()
    return _figure_bytes(fig)


def _ablation_curve_plot(result: EvaluationResult) -> bytes:
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    ab = result.ablation
    assert ab is not None
    n = len(ab.classes)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(3.4 * cols, 2.9 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax, c in zip(axes.flat, ab.classes, strict=False):
        for s in c.sets():
            color, label = _SET_STYLE[s.kind]
            ax.plot(s.counts, s.class_accuracy, color=color, lw=1.8, label=label)
            if s.control_class is not None:
                ax.fill_between(s.counts, [e.low for e in s.control_class], [e.high for e in s.control_class],
                                color=color, alpha=0.15, lw=0)
                ax.plot(s.counts, [e.mean for e in s.control_class], color=color, ls="--", lw=1,
                        label=f"{s.kind} controls")
        ax.set(title=c.class_name, ylim=(-0.02, 1.02), xlabel="features ablated (k)", ylabel="class accuracy")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=6)
    fig.tight_layout()
    return _figure_bytes(fig)


def _sanity_plot(sanity: SanityResult) -> bytes:
    """Spearman and SSIM per method against the randomisation steps (step 0: the trained model, 1 by definition)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12.8, 4.6))
    axes = fig.subplots(1, 2)
    x = list(range(len(sanity.steps) + 1))
    for i, method in enumerate(sanity.methods):
        style = _style(method, i)
        for ax, values in ((axes[0], sanity.spearman[method]), (axes[1], sanity.ssim[method])):
            ax.plot(x, [1.0, *[e.mean for e in values]], marker="o", ms=3, label=method, **style)
            if all(e.low is not None for e in values):
                ax.fill_between(x[1:], [e.low for e in values], [e.high for e in values], color=style["color"],
                                alpha=0.1, lw=0)
    cascading = sanity.kind == "cascading"
    for ax, what in ((axes[0], "Spearman rank correlation"), (axes[1], "SSIM")):
        ax.set_xticks(x, ["trained", *sanity.steps], rotation=45 if cascading else 0,
                      ha="right" if cascading else "center", fontsize=8)
        ax.set(ylabel=f"{what} to the trained maps", ylim=(-0.3, 1.05),
               xlabel="layers randomised, cumulatively from the output" if cascading else "model",
               title=f"{what} (n = {sanity.images} images)")
        ax.axhline(0, color="0.6", lw=0.8)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return _figure_bytes(fig)


# ----------------------------------------------------------------------------- writer


def write_evaluation(result: EvaluationResult, out: str | Path) -> list[Path]:
    """Write every file listed in the module docstring into ``out``; return their paths."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    tables: list[dict[str, str]] = []
    figures: list[dict[str, str]] = []
    written: list[Path] = []

    def table(name: str, rows: list[dict], section: str, title: str, caption: str) -> None:
        write_text(folder / name, _csv_text(rows))
        written.append(folder / name)
        tables.append({"file": name, "section": section, "title": title, "caption": caption})

    def figure(name: str, data: bytes, section: str, title: str, caption: str) -> None:
        write_bytes(folder / name, data)
        written.append(folder / name)
        figures.append({"file": name, "section": section, "title": title, "caption": caption})

    if result.methods:
        table("scores.csv", [m.summary_row() for m in result.methods], "scores", "Scores per method",
              f"IoU (mean over thresholds, 95 % interval), best threshold and its IoU, pointing game and mass in "
              f"mask on the {result.correct} correctly classified images (iou_mean_wrong: on the wrongly classified "
              f"ones); deletion AUC (lower is better) and insertion AUC (higher is better) on all {result.images} "
              "images; explanations are for the predicted class.")
    summary, curves = _localization_rows(result)
    if summary:
        table("iou_summary.csv", summary, "iou", "Localisation per method and image subset",
              "Per method and subset of images (correctly / wrongly classified / all): IoU with the mask averaged "
              "over thresholds with its 95 % interval, the best threshold and its IoU (chosen on the same images, "
              "so optimistic), pointing game and heatmap mass inside the mask; higher is better.")
        table("iou_curves.csv", curves, "iou", "IoU per threshold",
              "Mean IoU and 95 % interval over images at each threshold of the [0, 1]-normalised heatmap.")
        write_text(folder / "per_image.csv", _csv_text(list(result.per_image)))
        written.append(folder / "per_image.csv")
        figure("iou_vs_threshold.png", _iou_plot(result), "iou", "IoU vs threshold",
               "Each line is one method's mean IoU between its thresholded heatmap and the ground-truth mask "
               "(band: 95 % interval over images); a higher curve localises the class-deciding part better.")
    if result.methods:
        table("deletion_insertion_curves.csv", _faithfulness_rows(result), "scores", "Deletion and insertion curves",
              "Mean probability of the explained class as pixels are removed from the image (deletion) or added to "
              "a black image (insertion) in heatmap order, at each fraction of pixels.")
        figure("deletion_insertion.png", _faithfulness_plot(result), "scores", "Deletion and insertion curves",
               "Class probability as pixels are removed (left; a faster drop is better) or inserted (right; a "
               "faster rise is better) in the order of each method's heatmap.")
    if result.ablation is not None:
        ab = result.ablation
        seeds = len(ab.seeds)
        table("ablation_summary.csv", ab.summary_rows(), "ablation", "Ablation per class",
              f"Per class, its accuracy and the other classes' mean accuracy before and after zeroing, all at once: "
              f"its positive-weight relevant features, their controls ({seeds} random sets with the same number of "
              f"channels in each layer, from channels relevant to no class: mean and 2.5-97.5 percentile "
              f"interval), its negative-weight features and their controls, and the reference set (as many "
              f"channels of {ab.reference_layer} as the positive set, highest mean activation x logit gradient for "
              "the class). Last row: means over the classes.")
        table("ablation_sets.csv", ab.rows(), "ablation", "Ablation per set" + (" and k" if ab.curves else ""),
              "Per class, set (positive, negative, reference) and number k of its features ablated (first k in "
              "|weight| order): accuracy of the class and of the other classes, and of the layer-matched controls.")
        figure("ablation.png", _ablation_plot(result), "ablation", "Ablation per class",
               "Bars: the class's accuracy before and with each set (or its controls; error bars: 95 % interval "
               "over seeds) ablated; crosses: the other classes' mean accuracy, which a specific set leaves high.")
        if ab.curves:
            figure("ablation_curves.png", _ablation_curve_plot(result), "ablation", "Ablation curves",
                   "Class accuracy as the first k features of each set are zeroed; dashed with band: the "
                   "layer-matched controls (mean, 95 % interval over seeds).")
    if result.union_ablation is not None:
        table("ablation_union.csv", result.union_ablation.rows(), "ablation",
              "Ablation of all relevant features at once",
              "Accuracy per class (last row: mCA) with the union of every class's relevant features zeroed, against "
              "random sets with the same number of channels per layer, from channels relevant to no class (mean "
              "and 2.5-97.5 percentile interval over seeds).")
    for sanity in result.sanity:
        what = ("layers re-initialised cumulatively from the output down (each row: randomised down to that layer)"
                if sanity.kind == "cascading" else "a model of the same architecture trained on permuted labels")
        table(f"sanity_{sanity.kind}.csv", sanity.rows(), "sanity", f"Sanity check: {sanity.kind} randomisation",
              f"Per method, similarity of its maps with {what} to the trained model's maps, for the trained "
              f"model's predicted class on {sanity.images} images: Spearman rank correlation and SSIM, mean and "
              "95 % interval over images; a method that explains the model should fall far below 1.")
        figure(f"sanity_{sanity.kind}.png", _sanity_plot(sanity), "sanity", f"Sanity check: {sanity.kind} "
               "randomisation", "Similarity of each method's maps to its trained-model maps as the model is "
               "randomised (band: 95 % interval over images); lines that stay near 1 do not depend on the weights.")
    results = {**result.to_dict(), "tables": tables, "figures": figures}
    write_text(folder / "results.json", json.dumps(_clean(results), indent=1) + "\n")
    write_text(folder / "timings.json", json.dumps({k: round(v, 2) for k, v in result.timings.items()}, indent=1)
               + "\n")
    return [folder / "results.json", folder / "timings.json", *written]


# ----------------------------------------------------------------------------- printed summary


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_summary(result: EvaluationResult) -> str:
    """A plain-text table of the headline numbers (as printed by ``vebi evaluate``)."""
    lines = [f"{result.images} images, accuracy {result.accuracy:.4f} ({result.correct} correct, "
             f"{result.images - result.correct} wrong)" + ("; explanations for the predicted class" if result.methods
                                                            else "")]
    masks = any(m.correct is not None or m.wrong is not None for m in result.methods)
    if not result.methods:
        return "\n".join(lines + _ablation_lines(result))
    header = f"{'method':<22}"
    if masks:
        header += f" {'IoU':>6} {'95% CI':>13} {'best t':>6} {'bestIoU':>7} {'point':>6} {'mass':>6} {'IoU(wr)':>7}"
    header += f" {'del AUC':>7} {'ins AUC':>7}"
    lines += [header, "-" * len(header)]
    for m in result.methods:
        row = m.summary_row()
        text = f"{m.name:<22}"
        if masks:
            ci = f"[{_fmt(row['iou_low'])}, {_fmt(row['iou_high'])}]" if row["iou_low"] is not None else "-"
            text += (f" {_fmt(row['iou_mean']):>6} {ci:>13} {_fmt(row['best_threshold'], 2):>6} "
                     f"{_fmt(row['best_iou']):>7} {_fmt(row['pointing']):>6} {_fmt(row['mass_in_mask']):>6} "
                     f"{_fmt(row['iou_mean_wrong']):>7}")
        text += f" {_fmt(row['deletion_auc']):>7} {_fmt(row['insertion_auc']):>7}"
        lines.append(text)
    if masks:
        lines.append("IoU, pointing, mass: correctly classified images; IoU(wr): wrongly classified; AUCs: all images")
    return "\n".join(lines + _ablation_lines(result))


def _ablation_lines(result: EvaluationResult) -> list[str]:
    return format_ablation(result.ablation, result.union_ablation)


def format_ablation(ab: AblationResult | None, union: UnionAblationResult | None) -> list[str]:
    """The printed ablation table: per class (k = n) and the mean over classes; the union's line."""
    lines: list[str] = []

    def pair(own: float | None, other: float | None) -> str:
        return f"{_fmt(own)}/{_fmt(other)}"

    if ab is not None:
        lines += ["", f"ablation, whole sets (baseline mCA {ab.baseline_mca:.3f}); accuracy of the class/of the "
                  f"other classes; controls: {len(ab.seeds)} layer-matched random sets, mean [95 % interval]",
                  f"{'class':<18} {'before':>11} | {'n+':>3} {'positive':>11} {'controls':>27} | {'n-':>3} "
                  f"{'negative':>11} {'controls':>27} | {'reference':>11}"]
        for row in ab.summary_rows():
            cells = []
            for kind in ("positive", "negative"):
                if row[f"{kind}_control_class_accuracy"] is None:
                    control = "-"
                else:
                    control = (f"{_fmt(row[f'{kind}_control_class_accuracy'])} [{_fmt(row[f'{kind}_control_class_low'])},"
                               f" {_fmt(row[f'{kind}_control_class_high'])}]/{_fmt(row[f'{kind}_control_other_accuracy'])}")
                n = row[f"{kind}_features"]
                cells.append(f"{'' if n is None else (n if isinstance(n, int) else f'{n:.1f}'):>3} "
                             f"{pair(row[f'{kind}_class_accuracy'], row[f'{kind}_other_accuracy']):>11} {control:>27}")
            lines.append(f"{row['class_name'][:18]:<18} "
                         f"{pair(row['baseline_class_accuracy'], row['baseline_other_accuracy']):>11} | "
                         f"{cells[0]} | {cells[1]} | "
                         f"{pair(row['reference_class_accuracy'], row['reference_other_accuracy']):>11}")
    if union is not None:
        random = ("no layer-matched random sets: a layer has fewer channels outside the union than in it"
                  if union.random_mca is None else "layer-matched random sets of that size: "
                  f"{union.random_mca.mean:.3f} [{union.random_mca.low:.3f}, {union.random_mca.high:.3f}]")
        lines.append(f"union of {len(union.features)} relevant features ablated: mCA {union.baseline_mca:.3f} -> "
                     f"{union.ablated_mca:.3f} ({random})")
    return lines


def format_sanity(result: EvaluationResult) -> str:
    """The sanity checks' last step per method as a plain-text table ('' without sanity checks)."""
    lines: list[str] = []
    for sanity in result.sanity:
        last = sanity.steps[-1] if sanity.kind == "data" else f"all {len(sanity.steps)} layer groups"
        lines += ["", f"sanity check, {sanity.kind} randomisation ({last}; {sanity.images} images): similarity to "
                  "the trained model's maps",
                  f"{'method':<22} {'Spearman':>8} {'95% CI':>16} {'SSIM':>6} {'95% CI':>16}"]
        for method in sanity.methods:
            rho, sim = sanity.final(method)
            lines.append(f"{method:<22} {_fmt(rho.mean):>8} {_interval(rho):>16} {_fmt(sim.mean):>6} "
                         f"{_interval(sim):>16}")
    return "\n".join(lines)


def _interval(e: Any) -> str:
    return "-" if e.low is None else f"[{e.low:.3f}, {e.high:.3f}]"
