"""``vebi evaluate``: every explanation method and the ablation experiments on a run's test images."""

from __future__ import annotations

from pathlib import Path

import typer

from vebi.cli._app import app
from vebi.cli.common import DeviceOpt, TrustOpt
from vebi.run import resolve_device
from vebi.errors import VebiError


def _split_list(items: list[str] | None) -> list[str]:
    """Repeatable options that also accept comma-separated values."""
    return [part.strip() for item in items or [] for part in item.split(",") if part.strip()]


def _thresholds(items: list[str] | None) -> list[float] | None:
    values = _split_list(items)
    if not values:
        return None
    try:
        return [float(v) for v in values]
    except ValueError:
        raise VebiError(f"--thresholds must be numbers in [0, 1], got {', '.join(values)}") from None


@app.command("evaluate")
def evaluate_command(
    run: Path = typer.Argument(..., help="run folder with statistics and a relevance fit (`vebi collect`, `vebi fit`)"),
    data: Path = typer.Argument(..., help="test images: a class-per-folder image folder, or an an8Flower root / a "
                                "folder with test/ (its test split is used)"),
    masks: Path | None = typer.Option(None, "--masks", help="ground-truth masks mirroring DATA (CLASS/STEM.png); "
                                      "without it only the mask-free scores and the ablation are computed"),
    methods: list[str] | None = typer.Option(None, "--methods", "-m", help="methods to evaluate (repeatable or "
                                             "comma-separated; default: all, vebi's single-feature maps come with "
                                             "vebi; 'none': only the ablation)"),
    thresholds: list[str] | None = typer.Option(None, "--thresholds", help="IoU thresholds, comma-separated "
                                                "(default 0.05, 0.10, ..., 0.95)"),
    max_images: int | None = typer.Option(None, "--max-images", help="evaluate a seeded class-balanced subset of "
                                          "this many images"),
    seed: int = typer.Option(0, help="seed of the subset and of the random features in the ablation"),
    out: Path | None = typer.Option(None, "-o", "--out", help="output folder (default: RUN/evaluation)"),
    num_features: int = typer.Option(3, "--num-features", "-k", help="features per explanation (vebi, activation_map)"),
    steps: int = typer.Option(20, help="steps of the deletion/insertion curves"),
    batch_size: int = typer.Option(32, "--batch-size", "-b"),
    cam_layer: str | None = typer.Option(None, "--cam-layer", help="Grad-CAM layer (default: the last spatial map)"),
    ablation: bool = typer.Option(True, "--ablation/--no-ablation", help="run the feature ablation experiments"),
    ablation_seeds: int = typer.Option(3, "--ablation-seeds", help="random feature draws per class"),
    max_ablation_features: int | None = typer.Option(None, "--max-ablation-features", help="ablate at most this "
                                                     "many features per class (default: all relevant ones)"),
    device: str = DeviceOpt,
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    trust_model: bool = TrustOpt,
) -> None:
    """Score every method's heatmaps against the masks (IoU sweep, pointing, mass), deletion/insertion, and ablation."""
    from vebi.evaluate.output import format_summary, write_evaluation
    from vebi.evaluate.runner import evaluate_run

    names = _split_list(methods)
    chosen = None if not names else [] if names == ["none"] else names
    if chosen == [] and not ablation:
        raise VebiError("--methods none with --no-ablation leaves nothing to evaluate")

    if masks is not None and not masks.exists():
        raise VebiError(f"mask folder {masks} not found")
    result = evaluate_run(
        run, data, masks=masks, methods=chosen, thresholds=_thresholds(thresholds),
        max_images=max_images, seed=seed, num_features=num_features, steps=steps, batch_size=batch_size, cam_layer=cam_layer,
        ablation=ablation, ablation_seeds=ablation_seeds, max_ablation_features=max_ablation_features,
        device=resolve_device(device), progress=progress, trust_model=trust_model,
    )
    folder = out if out is not None else run / "evaluation"
    write_evaluation(result, folder)
    typer.echo(format_summary(result))
    typer.echo(f"results -> {folder / 'results.json'}")
