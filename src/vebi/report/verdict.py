"""What an evaluation's numbers show, in words: one short verdict per report section, from results.json.

Each verdict states the numbers it rests on (3 significant digits, accuracy drops in points = 100 x
the difference of the stated accuracies), so a reader can check it against the tables. A verdict
whose numbers are not in results.json is left out. "vebi" is the method judged; methods named
``vebi*`` (variants such as ``vebi_nofix``) are neither judged nor counted as baselines.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from vebi.report.tables import significant

__all__ = ["IoUCurve", "iou_curves", "plural", "verdicts"]

LEVEL = 0.005  # differences of scores in [0, 1] below this are called level
SMALL_DROP = 2.0  # accuracy points: an ablation that costs less "barely moved" the accuracy


@dataclass(frozen=True)
class IoUCurve:
    """One method's mean IoU per threshold on the correctly classified images, and its mean over thresholds."""

    method: str
    thresholds: tuple[float, ...]
    mean: tuple[float, ...]
    score: float


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 image``, ``2 images``."""
    return f"{n} {word if n == 1 else many or word + 's'}"


def _get(data: Any, *path: Any) -> Any:
    for key in path:
        if isinstance(data, dict) and isinstance(key, str):
            data = data.get(key)
        elif isinstance(data, list) and isinstance(key, int) and -len(data) <= key < len(data):
            data = data[key]
        else:
            return None
    return data


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _compare(rows: Sequence[dict[str, Any]], key: str, sign: int) -> tuple[dict, dict] | None:
    """(vebi's row, the best baseline's row) on column ``key``; ``sign`` +1 when higher is better."""
    scored = [r for r in rows if isinstance(r, dict) and _num(r.get(key)) is not None]
    vebi = next((r for r in scored if r.get("method") == "vebi"), None)
    baselines = [r for r in scored if not str(r.get("method", "")).startswith("vebi")]
    if vebi is None or not baselines:
        return None
    return vebi, max(baselines, key=lambda r: sign * r[key])


def _judge(what: str, key: str, sign: int, rows: Sequence[dict[str, Any]]) -> str | None:
    pair = _compare(rows, key, sign)
    if pair is None:
        return None
    vebi, best = pair
    v, b = float(vebi[key]), float(best[key])
    name = best["method"]
    gap = significant(abs(v - b))
    if abs(v - b) < LEVEL:
        return f"vebi's {what} {significant(v)} is level with the best baseline ({name}, {significant(b)})."
    if sign * (v - b) > 0:
        text = f"vebi's {what} {significant(v)} is ahead of the best baseline ({name}, {significant(b)}) by {gap}"
    else:
        text = f"vebi is not ahead: its {what} {significant(v)} is behind the best baseline ({name}, " \
               f"{significant(b)}) by {gap}"
    lows = [_num(r.get(key.removesuffix("_mean") + "_low")) for r in (vebi, best)]
    highs = [_num(r.get(key.removesuffix("_mean") + "_high")) for r in (vebi, best)]
    if None not in lows and None not in highs:
        overlap = max(lows) <= min(highs)  # type: ignore[type-var]
        text += ("; their 95 % intervals overlap, so this sample does not separate them" if overlap
                 else "; their 95 % intervals do not overlap")
    return text + "."


def _iou(results: dict[str, Any]) -> str | None:
    text = _judge("mean IoU", "iou_mean", 1, _get(results, "summary") or [])
    correct = _num(results.get("correct"))
    if text is None or correct is None:
        return text
    return f"On the {plural(int(correct), 'correctly classified image')}, {text}"


def _scores(results: dict[str, Any]) -> str | None:
    rows = _get(results, "summary") or []
    parts = [_judge("deletion AUC (lower is better)", "deletion_auc", -1, rows),
             _judge("insertion AUC (higher is better)", "insertion_auc", 1, rows)]
    said = [p for p in parts if p]
    scored, images = _num(_get(results, "settings", "faithfulness_images")), _num(results.get("images"))
    if said and scored is not None and images is not None and scored < images:
        said.insert(0, f"Deletion and insertion were scored on a class-balanced subset of {int(scored)} of the "
                       f"{plural(int(images), 'image')}.")
    return " ".join(said) or None


def _ablation(results: dict[str, Any]) -> str | None:
    """From results.json "ablation" "summary" (one row per class, k = n): the positive relevant set
    against its layer-matched random controls, and the other classes' accuracy."""
    rows = [r for r in (_get(_get(results, "ablation"), "summary") or []) if isinstance(_get(r, "class_index"), int)]
    keys = ("baseline_class_accuracy", "positive_class_accuracy", "positive_control_class_accuracy",
            "baseline_other_accuracy", "positive_other_accuracy")
    used = []
    for r in rows:
        values = [_num(_get(r, k)) for k in keys]
        n = _num(_get(r, "positive_features"))
        if None in values or not n:
            continue  # no positive feature, or no control drawn: nothing to compare
        used.append((*values, int(n)))
    if not used:
        return None
    k = len(used)
    a, b, r, o0, o1 = (sum(u[i] for u in used) / k for i in range(5))
    sizes = [u[5] for u in used]
    drop, drop_random, drop_other = 100 * (a - b), 100 * (a - r), 100 * (o0 - o1)
    text = (f"Ablating each class's positive relevant features ({min(sizes)}-{max(sizes)} per class) lowered its "
            "accuracy " if min(sizes) != max(sizes) else
            f"Ablating each class's {plural(sizes[0], 'positive relevant feature')} lowered its accuracy ")
    text += (f"from {significant(a)} to {significant(b)} on average over {plural(k, 'class', 'classes')}, a drop "
             f"of {drop:.1f} points, against {drop_random:.1f} points (to {significant(r)}) for as many random "
             f"features of the same layers; the other classes' accuracy moved by {drop_other:.1f} points.")
    if drop < SMALL_DROP:
        text += (" That barely moved it: the model does not depend on these features alone, which undercuts "
                 "calling them the relevant ones.")
    elif drop > drop_random + SMALL_DROP:
        text += " The relevant features matter more than random ones."
    else:
        text += " That is no more than random features cost, so this does not single them out."
    union = _get(results, "union_ablation")
    n, u0, u1 = _get(union, "features"), _num(_get(union, "baseline_mca")), _num(_get(union, "ablated_mca"))
    ur = _num(_get(_get(union, "random_mca"), "mean"))
    if isinstance(n, list) and None not in (u0, u1):
        text += (f" Zeroing all {plural(len(n), 'relevant feature')} of every class at once moved the mean class "
                 f"accuracy from {significant(u0)} to {significant(u1)}")
        text += f" (random sets of that size: {significant(ur)})." if ur is not None else "."
    return text


def verdicts(results: dict[str, Any]) -> dict[str, str]:
    """{section: verdict} for the sections whose numbers results.json holds."""
    said = {"iou": _iou(results), "scores": _scores(results), "ablation": _ablation(results)}
    return {k: v for k, v in said.items() if v}


def iou_curves(results: dict[str, Any]) -> tuple[IoUCurve, ...]:
    """Each method's IoU-vs-threshold curve on the correctly classified images, when results.json has it."""
    out = []
    for name, method in (_get(results, "methods") or {}).items():
        iou = _get(method, "correct", "iou")
        thresholds, curve, score = _get(iou, "thresholds"), _get(iou, "curve"), _num(_get(iou, "mean_over_thresholds",
                                                                                             "mean"))
        if not isinstance(thresholds, list) or not isinstance(curve, list) or score is None:
            continue
        means = [_num(_get(e, "mean")) for e in curve]
        if len(means) != len(thresholds) or None in means:
            continue
        out.append(IoUCurve(str(name), tuple(float(t) for t in thresholds), tuple(means), score))  # type: ignore
    return tuple(out)
