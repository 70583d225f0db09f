"""``vebi report``: the static HTML report of a run folder."""

from __future__ import annotations

from pathlib import Path

import typer

from vebi.cli._app import app
from vebi.cli.common import ProgressOpt


@app.command()
def report(
    run: Path = typer.Argument(..., help="run folder (written by `vebi collect`, `vebi fit`, ...)"),
    out: Path | None = typer.Option(None, "-o", "--out", help="where to write; the HTML file (default RUN/report/index.html), "
                                    "its images go to the folder <name>_files beside it"),
    explanations: Path | None = typer.Option(None, help="folder of `vebi explain` output (default RUN/explanations)"),
    evaluation: Path | None = typer.Option(None, help="folder of `vebi evaluate` output (default RUN/evaluation)"),
    max_features: int = typer.Option(60, "--max-features", help="relevant features per class, at most; shown"),
    max_explanations: int = typer.Option(12, help="explained images shown"),
    max_crops: int = typer.Option(16, help="top crops shown per feature"),
    progress: bool = ProgressOpt,
) -> None:
    """Write the run's HTML report.

    Summary, relevant features, explanations and evaluation of RUN; prints the page's path.
    """
    from vebi.io.folders import run_folder

    run_folder(run)  # a wrong folder is told before the report's imports (torch, matplotlib)
    from vebi.report import build_report

    result = build_report(run, out, explanations_dir=explanations, evaluation_dir=evaluation,
                          max_features=max_features, max_explanations=max_explanations, max_crops=max_crops,
                          progress=progress)
    for warning in result.warnings:
        typer.echo(f"vebi: warning: {warning}", err=True)
    typer.echo(str(result.path))
