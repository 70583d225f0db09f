"""``vebi interpret``: the average receptive-field crops of every relevant feature of a run."""

from __future__ import annotations

from pathlib import Path

import typer

from vebi.cli._app import app
from vebi.errors import VebiError


@app.command("interpret")
def interpret_command(
    run: Path = typer.Argument(..., help="run folder with statistics and a relevance fit (`vebi collect`, `vebi fit`)"),
    data: Path = typer.Argument(..., help="the image folder the statistics were collected on"),
    top_k: int = typer.Option(100, "--top-k", help="top images averaged per feature"),
    size: int = typer.Option(64, help="side of the average images, in pixels"),
    weighted: bool = typer.Option(False, help="weight each crop by the feature's response in its image"),
    cls: list[str] | None = typer.Option(None, "--class", "-c", help="class name (repeatable); default: all"),
    max_features: int | None = typer.Option(None, "--max-features", help="at most this many features per class"),
    keep_crops: int = typer.Option(8, "--keep-crops", help="individual top crops kept per feature"),
    ignore_global: bool = typer.Option(False, "--ignore-global",
                                       help="receptive fields without global-context branches "
                                            "(squeeze-and-excitation gates)"),
    workers: int = typer.Option(0, help="DataLoader worker processes reading the images"),
    progress: bool = typer.Option(True, help="show a progress bar"),
) -> None:
    """Average the receptive-field crops of each relevant feature's top images; write them under RUN."""
    from vebi.io.artifacts import load_relevance, load_run_info, load_stats
    from vebi.cli.common import build_dataset, build_model
    from vebi.interpretation.crops import grid_file, interpret, save_interpretations
    from vebi.interpretation.receptive import receptive_fields

    if top_k < 1 or size < 1 or keep_crops < 0 or workers < 0 or (max_features is not None and max_features < 1):
        raise VebiError("--top-k, --size and --max-features must be at least 1, --keep-crops and --workers at least 0")
    info = load_run_info(run)
    stats = load_stats(run)
    relevance = load_relevance(run)
    # receptive fields depend on the architecture only, so the weights are not loaded
    model = build_model({**info["model"], "weights": None})
    # images for display: the run's size and channels, without the model's normalisation
    dataset = build_dataset({**info["data"], "mean": None, "std": None}, path=str(data))
    if len(dataset.classes) != len(stats.class_names) or tuple(dataset.classes) != tuple(stats.class_names):
        raise VebiError(f"{data} has classes {', '.join(dataset.classes)}, the run has {', '.join(stats.class_names)}")
    fields = receptive_fields(model, stats.space.layers, input_size=stats.input_size, ignore_global=ignore_global)
    results = interpret(relevance, stats, dataset, fields=fields, top_k=top_k, size=size, weighted=weighted,
                        classes=cls or None, max_features=max_features, keep_crops=keep_crops,
                        num_workers=workers, progress=progress)
    settings = {"top_k": top_k, "size": size, "weighted": weighted, "keep_crops": keep_crops,
                "ignore_global": ignore_global,
                "max_features": max_features, "data": str(Path(data).resolve()), "fill": "mean of the images read"}
    folder = save_interpretations(results, run, settings)
    for interp in results:
        typer.echo(f"{interp.class_name}: {len(interp.features)} features -> {folder / grid_file(interp)}")
    typer.echo(f"interpretations -> {folder}")

