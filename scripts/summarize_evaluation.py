"""Print Markdown tables (for the README) from results files written by `vebi evaluate`.

    .venv/bin/python scripts/summarize_evaluation.py results/an8flower-single-6c.json results/an8flower-double-12c.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _f(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _ci(row: dict) -> str:
    if row.get("iou_low") is None:
        return _f(row.get("iou_mean"))
    return f"{row['iou_mean']:.3f} [{row['iou_low']:.3f}, {row['iou_high']:.3f}]"


def methods_table(results: dict) -> str:
    lines = ["| method | mean IoU [95 % CI] | best t: IoU | pointing | mass in mask | IoU, wrong | deletion AUC ↓ | "
             "insertion AUC ↑ |", "|---|---|---|---|---|---|---|---|"]
    for row in results["summary"]:
        best = "–" if row.get("best_iou") is None else f"{row['best_threshold']:.2f}: {row['best_iou']:.3f}"
        lines.append(f"| {row['method']} | {_ci(row)} | {best} | {_f(row.get('pointing'))} | "
                     f"{_f(row.get('mass_in_mask'))} | {_f(row.get('iou_mean_wrong'))} | {_f(row['deletion_auc'])} | "
                     f"{_f(row['insertion_auc'])} |")
    return "\n".join(lines)


def ablation_table(results: dict) -> str:
    ab, union = results.get("ablation"), results.get("union_ablation")
    if ab is None:
        return ""
    lines = ["| class | n ablated | accuracy | n relevant ablated | n random (mean ± std) | n highest-mean |",
             "|---|---|---|---|---|---|"]
    for c in ab["classes"]:
        top = c["top_mean_class_accuracy"]
        before = ab["baseline_class_accuracy"][c["class_index"]]
        lines.append(f"| {c['class_name']} | {c['counts'][-1]} | {before:.3f} | {c['relevant_class_accuracy'][-1]:.3f} "
                     f"| {c['random_class_accuracy_mean'][-1]:.3f} ± {c['random_class_accuracy_std'][-1]:.3f} "
                     f"| {'–' if top is None else f'{top[-1]:.3f}'} |")
    n = len(ab["classes"])
    tops = [c["top_mean_class_accuracy"] for c in ab["classes"]]
    top_mean = "–" if None in tops else f"{sum(t[-1] for t in tops) / n:.3f}"
    lines.append(f"| **mean over classes** | | {sum(ab['baseline_class_accuracy']) / n:.3f} | "
                 f"{sum(c['relevant_class_accuracy'][-1] for c in ab['classes']) / n:.3f} | "
                 f"{sum(c['random_class_accuracy_mean'][-1] for c in ab['classes']) / n:.3f} | {top_mean} |")
    if union is not None:
        lines.append(f"| **union, mCA** | {len(union['features'])} | {union['baseline_mca']:.3f} | "
                     f"{union['ablated_mca']:.3f} | {union['random_mca_mean']:.3f} ± {union['random_mca_std']:.3f} | – |")
    return "\n".join(lines)


def main(paths: list[str]) -> None:
    for path in paths:
        results = json.loads(Path(path).read_text(encoding="utf-8"))
        net = results.get("network", {})
        print(f"### {Path(path).stem}\n")
        print(f"Network: test accuracy {_f(net.get('test_accuracy'), 4)}, train accuracy "
              f"{_f(net.get('train_accuracy'), 4)}; evaluated {results['images']} test images, accuracy "
              f"{results['accuracy']:.4f} ({results['wrong']} wrong). Relevant features per class (mu = "
              f"{results['settings']['mu']:g}): {', '.join(map(str, results['relevant_counts']))}.\n")
        if results["summary"]:
            print(methods_table(results) + "\n")
        table = ablation_table(results)
        if table:
            print(table + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
