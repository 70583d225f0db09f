"""``vebi explain``: per image, a PNG panel and a JSON with the numbers of its explanation."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import typer

from vebi.cli._app import app
from vebi.cli.common import DeviceOpt, resolve_device
from vebi.errors import VebiError


@app.command("explain")
def explain_command(
    run: Path = typer.Argument(..., help="run folder with a relevance fit (`vebi collect`, `vebi fit`)"),
    images: list[Path] = typer.Argument(..., help="image files to explain"),
    out: Path | None = typer.Option(None, "-o", "--out", help="folder for IMAGE.png panels and IMAGE.json "
                                    "(default: RUN/explanations, RUN/explanations/METHOD for other methods; "
                                    "where `vebi report RUN` finds them)"),
    method: str = typer.Option("vebi", "--method", "-m", help="vebi, vebi_nofix, or a baseline of vebi.methods.baselines "
                               "(guided_backprop, deconvnet, grad_cam, grad_cam_plus_plus, integrated_gradients, "
                               "activation_map)"),
    target: str | None = typer.Option(None, "--target", "-t", help="class name or index to explain "
                                      "(default: the predicted class)"),
    top_k: int = typer.Option(3, "--top-k", help="features per explanation (vebi, activation_map)"),
    pool_fix: bool = typer.Option(False, "--pool-fix/--no-pool-fix", help="vebi: route pooled signals to the "
                                  "window's argmax, overwriting"),
    batch_size: int = typer.Option(16, "--batch-size", "-b"),
    device: str = DeviceOpt,
) -> None:
    """Explain the model's prediction for each IMAGE with the run's relevant features (or a baseline)."""
    import torch

    from vebi.io.artifacts import load_relevance, load_run_info
    from vebi.io.atomic import write_text
    from vebi.cli.common import build_model
    from vebi.data import image_transform, load_image

    if top_k < 1 or batch_size < 1:
        raise VebiError("--top-k and --batch-size must be at least 1")
    info = load_run_info(run)
    if out is None:
        out = run / "explanations" if method == "vebi" else run / "explanations" / method
    relevance = load_relevance(run)
    dev = resolve_device(device)
    explain_fn = _method(method, relevance, top_k)
    model = build_model(info["model"]).to(dev)
    data = info["data"]
    channels = int(data.get("channels", 3))
    to_input = image_transform(data.get("size"), channels, data.get("mean"), data.get("std"))
    to_display = image_transform(data.get("size"), channels)
    targets = None if target is None else relevance.class_index(int(target) if target.isdigit() else target)

    loaded = []
    for path in images:
        picture = load_image(path, channels)
        loaded.append((path, to_input(picture), to_display(picture)))
    stems = _unique_stems([p for p, _, _ in loaded])
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (_, tensor, _) in enumerate(loaded):
        groups.setdefault(tuple(tensor.shape), []).append(i)
    out.mkdir(parents=True, exist_ok=True)
    for members in groups.values():
        for start in range(0, len(members), batch_size):
            chunk = members[start:start + batch_size]
            batch = torch.stack([loaded[i][1] for i in chunk])
            results = explain_fn(model, batch, targets, interpretation_dir=run, pool_fix=pool_fix)
            for i, result in zip(chunk, results, strict=True):
                path, _, shown = loaded[i]
                record = {"image": str(Path(path).resolve()), "panel": str((out / f"{stems[i]}.png").resolve()),
                          **result}
                _write_panel(out / f"{stems[i]}.png", shown, record)
                write_text(out / f"{stems[i]}.json", json.dumps(_numbers(record), indent=2) + "\n")
                typer.echo(f"{path}: {_summary(record)} -> {out / stems[i]}.png")


def _method(name: str, relevance: Any, top_k: int):
    """A function (model, images, target, **) -> list of per-image records (maps as tensors)."""
    if name in ("vebi", "vebi_nofix"):
        return lambda model, images, target, **kw: _vebi(model, images, target, relevance, top_k,
                                                         name == "vebi", **kw)
    from vebi.methods.baselines import METHODS, build_method

    if name not in METHODS:
        choices = ", ".join(sorted({"vebi", "vebi_nofix", *METHODS}))
        raise VebiError(f"unknown method {name!r}; choose one of {choices}")
    options = {"top_k": top_k} if name == "activation_map" else {}
    fn = build_method(name, relevance, **options)
    return lambda model, images, target, **kw: _baseline(model, images, target, relevance, name, fn)


def _vebi(model, images, target, relevance, top_k, stride_fix, *, interpretation_dir, pool_fix) -> list[dict]:
    from vebi.explanation.explainer import Explainer

    explainer = Explainer(model, relevance, top_k=top_k, stride_fix=stride_fix, pool_fix=pool_fix,
                          interpretation_dir=interpretation_dir)
    explanations = explainer(images, target)
    return [{**e.to_dict(), "maps": {"combined": e.combined, **{f"feature{f.rank}": f.heatmap for f in e.features}}}
            for e in explanations]


def _baseline(model, images, target, relevance, name, fn) -> list[dict]:
    import torch

    from vebi.hooks import preserve_model
    from vebi.models import model_device

    device = model_device(model, images.device)
    with preserve_model(model, freeze=False, no_inplace=False), torch.no_grad():
        probs = model(images.to(device)).float().softmax(dim=1).cpu()
    predicted = probs.argmax(dim=1)
    if target is None and probs.shape[1] != relevance.num_classes:
        raise VebiError(f"the model has {probs.shape[1]} outputs but the run has {relevance.num_classes} classes; "
                        "pass --target")
    targets = predicted if target is None else torch.full_like(predicted, int(target))
    maps = fn(model, images.to(device), targets.to(device)).cpu()
    names = relevance.class_names
    records = []
    for b in range(images.shape[0]):
        p, t = int(predicted[b]), int(targets[b])
        records.append({"method": name, "predicted": p, "predicted_name": names[p] if p < len(names) else None,
                        "score": float(probs[b, p]), "target": t, "target_name": names[t],
                        "target_score": float(probs[b, t]), "features": [], "maps": {"combined": maps[b]}})
    return records


def _numbers(record: dict) -> dict:
    return {k: v for k, v in record.items() if k != "maps"}


def _summary(record: dict) -> str:
    text = f"{record['predicted_name'] or record['predicted']} ({record['score']:.3f})"
    if record["target"] != record["predicted"]:
        text += f", explaining {record['target_name']}"
    if record["features"]:
        text += "; " + ", ".join(f"{f['layer']} c{f['channel']} r={f['contribution']:.3g}" for f in record["features"])
    return text


def _unique_stems(paths: Sequence[Path]) -> list[str]:
    stems: list[str] = []
    seen: dict[str, int] = {}
    for path in paths:
        stem = Path(path).stem or "image"
        count = seen.get(stem, 0)
        seen[stem] = count + 1
        stems.append(stem if count == 0 else f"{stem}-{count}")
    return stems


def _write_panel(path: Path, image: Any, record: dict) -> None:
    """Image with the prediction, combined map, and per feature its heatmap over its interpretation."""
    from matplotlib.figure import Figure
    from PIL import Image

    from vebi.io.atomic import write_bytes

    features = record["features"]
    links = [f.get("interpretation") for f in features]
    rows = 2 if any(links) else 1
    columns = 2 + len(features)
    fig = Figure(figsize=(2.4 * columns, 2.6 * rows))
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    picture = image.clamp(0, 1).permute(1, 2, 0).numpy()
    grey = picture.shape[2] == 1
    axes[0, 0].imshow(picture[..., 0] if grey else picture[..., :3], cmap="gray" if grey else None)
    title = f"{record['predicted_name'] or record['predicted']} ({record['score']:.2f})"
    if record["target"] != record["predicted"]:
        title += f"\nexplaining {record['target_name']}"
    axes[0, 0].set_title(title, fontsize=9)
    maps = record["maps"]
    axes[0, 1].imshow(maps["combined"].numpy(), cmap="jet", vmin=0, vmax=1)
    axes[0, 1].set_title(f"{record['method']}: combined" if features else record["method"], fontsize=9)
    for i, f in enumerate(features):
        axes[0, 2 + i].imshow(maps[f"feature{f['rank']}"].numpy(), cmap="jet", vmin=0, vmax=1)
        axes[0, 2 + i].set_title(f"{f['layer']} c{f['channel']}\nr={f['contribution']:.3g} ({f['share']:.0%})",
                                 fontsize=8)
        if links[i]:
            with Image.open(links[i]) as interp:
                axes[1, 2 + i].imshow(interp.convert("RGB"))
            axes[1, 2 + i].set_title("interpretation", fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    write_bytes(path, buffer.getvalue())
