"""``vebi evaluate``: every explanation method and the ablation experiments on a run's test images."""

from __future__ import annotations

from pathlib import Path

import typer

from vebi.cli._app import app
from vebi.cli.common import DeviceOpt, ProgressOpt, TrustOpt, batch_size_option, seed_option
from vebi.io.folders import data_folder
from vebi.run import Run, resolve_device
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


def _method_options(items: list[str] | None) -> dict[str, dict[str, object]]:
    """``["integrated_gradients.steps=8"]`` -> ``{"integrated_gradients": {"steps": 8}}`` (values as JSON
    when possible)."""
    from vebi.models import parse_model_args

    out: dict[str, dict[str, object]] = {}
    for item in items or []:
        key, _, value = item.partition("=")
        method, _, option = key.partition(".")
        if "=" not in item or not method.strip() or not option.strip():
            raise VebiError(f"--method-option {item!r} is not of the form METHOD.OPTION=VALUE "
                            "(e.g. integrated_gradients.steps=8)")
        out.setdefault(method.strip(), {}).update(parse_model_args([f"{option.strip()}={value}"]))
    return out


@app.command("evaluate")
def evaluate_command(
    run: Path = typer.Argument(..., help="run folder with statistics and a relevance fit (`vebi collect`, `vebi fit`)"),
    data: Path = typer.Argument(..., help="test images: a class-per-folder image folder, or an an8Flower root / a "
                                "folder with test/ (its test split is used)"),
    masks: Path | None = typer.Option(None, "--masks", help="ground-truth masks mirroring DATA (CLASS/STEM.png); "
                                      "without them (default) only the mask-free scores and the ablation"),
    methods: list[str] | None = typer.Option(None, "--method", "--methods", "-m", help="explanation method; evaluate these (repeatable or "
                                             "comma-separated; default: all, vebi's single-feature maps come with "
                                             "vebi; 'none': only the ablation)"),
    method_option: list[str] | None = typer.Option(None, "--method-option", help="METHOD.OPTION=VALUE: an option "
                                                   "of one evaluated method (repeatable; e.g. "
                                                   "integrated_gradients.steps=8; default: the "
                                                   "method's own defaults)"),
    thresholds: list[str] | None = typer.Option(None, "--thresholds", help="IoU thresholds, comma-separated "
                                                "(default 0.05, 0.10, ..., 0.95)"),
    max_images: int | None = typer.Option(None, "--max-images", help="evaluate a seeded class-balanced subset of "
                                          "this many images (default: all)"),
    seed: int = seed_option("the image subset and the ablation's random features"),
    out: Path | None = typer.Option(None, "-o", "--out", help="where to write; the results folder (default RUN/evaluation)"),
    num_features: int = typer.Option(3, "--num-features", "-k", help="features per explanation; for vebi and activation_map"),
    steps: int = typer.Option(20, help="steps of the deletion/insertion curves"),
    faithfulness_images: int | None = typer.Option(None, "--faithfulness-images", help="deletion/insertion curves "
                                                   "on a seeded class-balanced subset of this many of the evaluated "
                                                   "images (default: all; they are most of the evaluation's time)"),
    batch_size: int = batch_size_option(32),
    cam_layer: str | None = typer.Option(None, "--cam-layer", help="Grad-CAM layer (default: the last spatial map)"),
    ablation: bool = typer.Option(True, "--ablation/--no-ablation", help="run the feature ablation experiments"),
    ablation_seeds: int = typer.Option(5, "--ablation-seeds", help="layer-matched random control sets per "
                                       "ablated set (seeds)"),
    max_ablation_features: int | None = typer.Option(None, "--max-ablation-features", help="ablate at most this "
                                                     "many features of each set (default: all relevant ones)"),
    ablation_curves: bool = typer.Option(False, "--ablation-curves/--no-ablation-curves", help="ablate every "
                                         "k = 0..n features of each set, not only all n"),
    ablation_batch: int | None = typer.Option(None, "--ablation-batch", help="images per forward pass of the "
                                              "ablation, feature sets stacked (default: from free memory, <= 1024, "
                                              "the largest map <= 512 MiB)"),
    sanity: bool = typer.Option(False, "--sanity/--no-sanity", help="cascading randomisation test of every method's "
                                "maps (layers re-initialised from the output down; Spearman and SSIM)"),
    sanity_images: int = typer.Option(16, "--sanity-images", help="images of the sanity checks (class-balanced)"),
    random_label_weights: Path | None = typer.Option(None, "--random-label-weights", help="weights of the run's "
                                                     "architecture trained on permuted labels (`vebi train "
                                                     "--shuffle-labels`): adds the data randomisation test (default: none)"),
    device: str = DeviceOpt,
    progress: bool = ProgressOpt,
    trust_model: bool = TrustOpt,
) -> None:
    """Score the explanations: IoU, deletion/insertion, ablation.

    Every method's heatmaps against the ground-truth masks (IoU sweep, pointing game, mass in mask),
    deletion/insertion curves, the feature ablation experiments and (with --sanity) the sanity checks.
    """
    names = _split_list(methods)
    chosen = None if not names else [] if names == ["none"] else names
    if chosen == [] and not ablation:
        raise VebiError("--methods none with --no-ablation leaves nothing to evaluate")

    if masks is not None and not masks.exists():
        raise VebiError(f"mask folder {masks} not found")
    Run.open(run)  # a wrong folder is told before torch is imported
    data_folder(data)

    from vebi.evaluate.output import format_sanity, format_summary, write_evaluation
    from vebi.evaluate.runner import evaluate_run

    result = evaluate_run(
        run, data, masks=masks, methods=chosen, method_options=_method_options(method_option),
        thresholds=_thresholds(thresholds),
        max_images=max_images, seed=seed, num_features=num_features, steps=steps,
        faithfulness_images=faithfulness_images, batch_size=batch_size, cam_layer=cam_layer,
        ablation=ablation, ablation_seeds=ablation_seeds, max_ablation_features=max_ablation_features,
        ablation_curves=ablation_curves, ablation_batch=ablation_batch,
        sanity=sanity, sanity_images=sanity_images, random_label_weights=random_label_weights,
        device=resolve_device(device), progress=progress, trust_model=trust_model,
    )
    folder = out if out is not None else run / "evaluation"
    write_evaluation(result, folder)
    typer.echo(format_summary(result))
    if result.sanity:
        typer.echo(format_sanity(result))
    typer.echo(f"results -> {folder / 'results.json'}")
