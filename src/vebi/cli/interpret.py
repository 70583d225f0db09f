"""``vebi interpret``: the average receptive-field crops of every relevant feature of a run."""

from __future__ import annotations

from pathlib import Path

import typer

from vebi.cli._app import app
from vebi.cli.common import ProgressOpt, TrustOpt, WorkersOpt
from vebi.errors import VebiError


@app.command("interpret")
def interpret_command(
    run: Path = typer.Argument(..., help="run folder with statistics and a relevance fit (`vebi collect`, `vebi fit`)"),
    data: Path = typer.Argument(..., help="the image folder the statistics were collected on"),
    top_k: int = typer.Option(100, "--top-k", help="top images per feature; averaged (at most those collected)"),
    tile_size: int = typer.Option(64, "--tile-size", help="side of the average images, in pixels"),
    weighted: bool = typer.Option(False, help="weight each crop by the feature's response in its image"),
    cls: list[str] | None = typer.Option(None, "--class", "-c", help="class name (repeatable); default: all"),
    max_features: int | None = typer.Option(None, "--max-features", help="relevant features per class, at most; "
                                            "those of largest |weight| (default: all)"),
    keep_crops: int = typer.Option(8, "--keep-crops", help="individual top crops kept per feature"),
    ignore_global: bool = typer.Option(False, "--ignore-global",
                                       help="receptive fields without global-context branches "
                                            "(squeeze-and-excitation gates)"),
    workers: int = WorkersOpt,
    progress: bool = ProgressOpt,
    trust_model: bool = TrustOpt,
) -> None:
    """Average crops of each relevant feature's top images.

    The receptive-field crops of each relevant feature's top images of DATA, averaged; written to
    RUN/interpretation.
    """
    from vebi.pipeline import interpret_run

    if top_k < 1 or tile_size < 1 or keep_crops < 0 or workers < 0 or (max_features is not None and max_features < 1):
        raise VebiError("--top-k, --tile-size and --max-features must be at least 1, --keep-crops and --workers at least 0")
    results, folder = interpret_run(run, data, ignore_global=ignore_global, workers=workers, trust_model=trust_model,
                                    top_k=top_k, size=tile_size,
                                    weighted=weighted, classes=cls or None, max_features=max_features,
                                    keep_crops=keep_crops, progress=progress)
    from vebi.interpretation.store import grid_file

    for interp in results:
        typer.echo(f"{interp.class_name}: {len(interp.features)} features -> {folder / grid_file(interp)}")
    typer.echo(f"interpretations -> {folder}")
