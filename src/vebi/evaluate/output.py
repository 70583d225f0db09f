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
    ablation_curves.csv             per class and k: class accuracy and mCA for relevant / random /
                                    highest-mean features (AblationResult.rows)
    ablation_summary.csv            per class (and their mean): all n relevant features ablated vs n
                                    random vs n top-mean
    ablation_union.csv              union of all relevant features vs random sets of its size
    ablation_curves.png             per class: class accuracy vs features ablated
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vebi.io.atomic import write_bytes, write_text
from vebi.evaluate.runner import SUBSETS, EvaluationResult

__all__ = ["format_summary", "write_evaluation"]


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


def _ablation_summary_rows(result: EvaluationResult) -> list[dict]:
    assert result.ablation is not None
    rows = []
    for c in result.ablation.classes:
        n = c.counts[-1]
        rows.append({
            "class_index": c.class_index, "class_name": c.class_name, "relevant_features": len(c.features),
            "ablated": n, "baseline_class_accuracy": result.ablation.baseline_class_accuracy[c.class_index],
            "relevant_class_accuracy": c.relevant_class_accuracy[-1],
            "random_class_accuracy_mean": c.random_class_accuracy_mean[-1],
            "random_class_accuracy_std": c.random_class_accuracy_std[-1],
            "top_mean_class_accuracy": None if c.top_mean_class_accuracy is None else c.top_mean_class_accuracy[-1],
            "baseline_mca": result.ablation.baseline_mca, "relevant_mca": c.relevant_mca[-1],
            "random_mca_mean": c.random_mca_mean[-1], "random_mca_std": c.random_mca_std[-1],
            "top_mean_mca": None if c.top_mean_mca is None else c.top_mean_mca[-1],
        })
    return rows


def _ablation_mean(result: EvaluationResult) -> dict[str, Any]:
    """Class accuracies of :func:`_ablation_summary_rows` averaged over the classes."""
    rows = _ablation_summary_rows(result)
    keys = ("baseline_class_accuracy", "relevant_class_accuracy", "random_class_accuracy_mean",
            "top_mean_class_accuracy")
    return {k: None if any(r[k] is None for r in rows) else sum(r[k] for r in rows) / len(rows) for k in keys}


def _union_rows(result: EvaluationResult) -> list[dict]:
    u = result.union_ablation
    assert u is not None
    rows = u.rows()
    rows.append({"class_index": "", "class_name": "mCA (all classes)", "baseline_class_accuracy": u.baseline_mca,
                 "ablated_class_accuracy": u.ablated_mca, "random_class_accuracy_mean": u.random_mca_mean,
                 "random_class_accuracy_std": u.random_mca_std})
    for row in rows:
        row["features_ablated"] = len(u.features)
    return rows


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


def _ablation_plot(result: EvaluationResult) -> bytes:
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
        k = list(c.counts)
        ax.plot(k, c.relevant_class_accuracy, color="black", lw=2, label="relevant (|w| order)")
        mean, std = c.random_class_accuracy_mean, c.random_class_accuracy_std
        ax.plot(k, mean, color="tab:blue", label=f"random ({len(ab.seeds)} seeds)")
        ax.fill_between(k, [a - s for a, s in zip(mean, std)], [a + s for a, s in zip(mean, std)],
                        color="tab:blue", alpha=0.2, lw=0)
        if c.top_mean_class_accuracy is not None:
            ax.plot(k, c.top_mean_class_accuracy, color="tab:orange", label="highest mean response")
        ax.plot(k, c.relevant_mca, color="black", ls=":", lw=1, label="mCA, relevant")
        ax.set(title=c.class_name, ylim=(-0.02, 1.02), xlabel="features ablated", ylabel="class accuracy")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=7)
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
        mean_row = {"class_index": "", "class_name": "mean over classes", **_ablation_mean(result)}
        table("ablation_summary.csv", [*_ablation_summary_rows(result), mean_row], "ablation",
              "Ablation: all relevant features",
              "Per class, accuracy after zeroing its n relevant features, against n random features (mean and std "
              "over seeds) and the n features of highest mean response; class accuracy and mean class accuracy "
              "(mCA).")
        table("ablation_curves.csv", result.ablation.rows(), "ablation", "Ablation curves",
              "Per class and number k of ablated features: class accuracy and mCA for the k most relevant features "
              "(|weight| order), k random features (mean, std over seeds) and the k of highest mean response.")
        figure("ablation_curves.png", _ablation_plot(result), "ablation", "Ablation curves",
               "Class accuracy as more features are zeroed: relevant ones in |weight| order (black), random ones "
               "(blue, band: one std over seeds), those of highest mean response (orange); dotted: mCA.")
    if result.union_ablation is not None:
        table("ablation_union.csv", _union_rows(result), "ablation", "Ablation of all relevant features at once",
              "Accuracy per class (last row: mCA) with the union of every class's relevant features zeroed, against "
              "random sets of the same size (mean and std over seeds).")
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
    lines: list[str] = []
    ab, union = result.ablation, result.union_ablation
    if ab is not None:
        lines.append("")
        lines.append(f"ablation (baseline mCA {ab.baseline_mca:.3f}): class accuracy after ablating n features")
        lines.append(f"{'class':<22} {'n':>4} {'before':>7} {'relevant':>8} {'random':>13} {'top-mean':>8}")
        for c in ab.classes:
            top = "-" if c.top_mean_class_accuracy is None else f"{c.top_mean_class_accuracy[-1]:.3f}"
            rnd = f"{c.random_class_accuracy_mean[-1]:.3f}+-{c.random_class_accuracy_std[-1]:.3f}"
            lines.append(f"{c.class_name:<22} {c.counts[-1]:>4} {ab.baseline_class_accuracy[c.class_index]:>7.3f} "
                         f"{c.relevant_class_accuracy[-1]:>8.3f} {rnd:>13} {top:>8}")
        mean = _ablation_mean(result)
        top = "-" if mean["top_mean_class_accuracy"] is None else f"{mean['top_mean_class_accuracy']:.3f}"
        lines.append(f"{'mean over classes':<22} {'':>4} {mean['baseline_class_accuracy']:>7.3f} "
                     f"{mean['relevant_class_accuracy']:>8.3f} {mean['random_class_accuracy_mean']:>13.3f} {top:>8}")
    if union is not None:
        lines.append(f"union of {len(union.features)} relevant features ablated: mCA {union.baseline_mca:.3f} -> "
                     f"{union.ablated_mca:.3f} (random sets of that size: {union.random_mca_mean:.3f} +- "
                     f"{union.random_mca_std:.3f})")
    return lines
