"""``vebi report``: the static HTML report of a run folder."""

from __future__ import annotations

from pathlib import Path

import typer

from vebi.cli._app import app


@app.command()
def report(
    run: Path = typer.Argument(..., help="run folder (written by `vebi collect`, `vebi fit`, ...)"),
    out: Path | None = typer.Option(None, "-o", "--out", help="HTML file to write (default RUN/report/index.html); "
                                    "its images go to the folder <name>_files beside it"),
    explanations: Path | None = typer.Option(None, help="folder of `vebi explain` output (default RUN/explanations)"),
    evaluation: Path | None = typer.Option(None, help="folder of `vebi evaluate` output (default RUN/evaluation)"),
    max_features: int = typer.Option(60, help="relevant features shown per class"),
    max_explanations: int = typer.Option(12, help="explained images shown"),
    max_crops: int = typer.Option(16, help="top crops shown per feature"),
    progress: bool = typer.Option(True, help="show a progress bar"),
) -> None:
    """Write the report of RUN (summary, relevant features, explanations, evaluation) and print its path."""
    from vebi.report import build_report

    result = build_report(run, out, explanations_dir=explanations, evaluation_dir=evaluation,
                          max_features=max_features, max_explanations=max_explanations, max_crops=max_crops,
                          progress=progress)
    for warning in result.warnings:
        typer.echo(f"vebi: warning: {warning}", err=True)
    typer.echo(str(result.path))
