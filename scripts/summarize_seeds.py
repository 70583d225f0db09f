"""Markdown summary of the an8Flower evaluation over training seeds (for the README).

Reads RESULTS/an8flower-<variant>-seed<seed>.json and the per_image.csv beside it (written by
`vebi evaluate`); per variant and seed: vebi's default (``vebi``), the authors' demo variant
(``vebi_paper``) and the best baseline by mean IoU, each with mean-over-thresholds IoU,
best-threshold IoU, pointing and mass in mask on the correctly classified test images; and the
paired per-image differences of ``vebi`` to the best baseline and to ``vebi_paper`` (IoU averaged
over thresholds), mean with a two-sided 95 % Student-t interval over images.

    python scripts/summarize_seeds.py results [--out results/an8flower-summary.md]
"""

from __future__ import annotations

import argparse
import csv
import json
import re
from pathlib import Path

import torch

from vebi.evaluate.metrics import Estimate, estimate
from vebi.io.atomic import write_text

# the methods that are not vebi's own (vebi, its single-feature maps, its variants)
BASELINES = ("grad_cam", "grad_cam_plus_plus", "guided_backprop", "deconvnet", "integrated_gradients",
             "activation_map")
CLAIM = 0.05  # the margin in mean IoU the claim asks of vebi's default over the best baseline


def _per_image(path: Path) -> dict[str, dict[str, float]]:
    """method -> image -> IoU averaged over thresholds, correctly classified images only."""
    out: dict[str, dict[str, float]] = {}
    with path.open(encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row["subset"] == "correct":
                out.setdefault(row["method"], {})[row["image"]] = float(row["iou_mean"])
    return out


def _paired(scores: dict[str, dict[str, float]], a: str, b: str) -> tuple[str, Estimate]:
    images = sorted(scores[a])
    diff = torch.tensor([scores[a][i] - scores[b][i] for i in images], dtype=torch.float64)
    e = estimate(diff)
    return f"{e.mean:+.3f} [{e.low:+.3f}, {e.high:+.3f}]", e


def summarize(folder: Path) -> str:
    pattern = re.compile(r"an8flower-(.+)-seed(\d+)\.json$")
    runs = sorted((m.group(1), int(m.group(2)), p) for p in folder.glob("an8flower-*-seed*.json")
                  if (m := pattern.search(p.name)))
    lines = ["| variant | seed | test acc. | images | vebi IoU (best t) | vebi_paper IoU | best baseline IoU (best t) "
             "| pointing vebi / baseline | mass vebi / baseline | vebi - baseline [95 %] | vebi - vebi_paper [95 %] "
             "| claim |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for variant, seed, path in runs:
        results = json.loads(path.read_text(encoding="utf-8"))
        rows = {r["method"]: r for r in results["summary"]}
        per_image = folder / path.stem / "per_image.csv"
        if "vebi" not in rows or not per_image.is_file():
            continue
        scores = _per_image(per_image)
        baselines = [m for m in BASELINES if m in rows and rows[m]["iou_mean"] is not None]
        best = max(baselines, key=lambda m: rows[m]["iou_mean"])
        v, b = rows["vebi"], rows[best]
        to_base, e = _paired(scores, "vebi", best)
        to_paper = _paired(scores, "vebi", "vebi_paper")[0] if "vebi_paper" in scores else "–"
        paper = f"{rows['vebi_paper']['iou_mean']:.3f}" if "vebi_paper" in rows else "–"
        holds = e.mean >= CLAIM and e.low is not None and e.low > 0
        lines.append(
            f"| {variant} | {seed} | {results['network'].get('test_accuracy', float('nan')):.4f} | {results['correct']} "
            f"| {v['iou_mean']:.3f} ({v['best_iou']:.3f}) | {paper} | {best} {b['iou_mean']:.3f} ({b['best_iou']:.3f}) "
            f"| {v['pointing']:.3f} / {b['pointing']:.3f} | {v['mass_in_mask']:.3f} / {b['mass_in_mask']:.3f} "
            f"| {to_base} | {to_paper} | {'holds' if holds else 'fails'} |")
    lines.append("")
    lines.append(f"IoU averaged over thresholds 0.05-0.95 on the correctly classified test images (images); claim: "
                 f"vebi - best baseline >= {CLAIM} with the paired 95 % interval above 0.")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    text = summarize(args.results)
    print(text)
    if args.out is not None:
        write_text(args.out, text)


if __name__ == "__main__":
    main()
