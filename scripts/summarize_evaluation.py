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

    def control(row: dict, kind: str) -> str:
        if row.get(f"{kind}_control_class_accuracy") is None:
            return "–"
        return (f"{row[f'{kind}_control_class_accuracy']:.3f} [{row[f'{kind}_control_class_low']:.3f}, "
                f"{row[f'{kind}_control_class_high']:.3f}]")

    lines = ["| class | accuracy (others) | n+ | positive set (others) | its controls | n− | negative set | "
             "its controls | reference (others) |", "|---|---|---|---|---|---|---|---|---|"]
    for row in ab["summary"]:
        name = row["class_name"] if row["class_index"] != "" else f"**{row['class_name']}**"
        lines.append(f"| {name} | {_f(row['baseline_class_accuracy'])} ({_f(row['baseline_other_accuracy'])}) | "
                     f"{_f(row['positive_features'], 1)} | {_f(row['positive_class_accuracy'])} "
                     f"({_f(row['positive_other_accuracy'])}) | {control(row, 'positive')} | "
                     f"{_f(row['negative_features'], 1)} | {_f(row['negative_class_accuracy'])} | "
                     f"{control(row, 'negative')} | {_f(row['reference_class_accuracy'])} "
                     f"({_f(row['reference_other_accuracy'])}) |")
    if union is not None:
        random = union.get("random_mca")
        random = "–" if random is None else f"{random['mean']:.3f}"
        lines.append(f"\nUnion of {len(union['features'])} relevant features: mCA {union['baseline_mca']:.3f} -> "
                     f"{union['ablated_mca']:.3f}; layer-matched random sets: "
                     f"{random}")
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
