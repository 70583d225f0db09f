"""``vebi demo``: generate, train, collect, fit, interpret, explain, evaluate and report in one go."""

from __future__ import annotations

from pathlib import Path

import typer

from vebi.cli._app import app


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), "-o", "--out", help="folder for every stage's output"),
    fresh: bool = typer.Option(False, "--fresh", help="rerun every stage instead of reusing finished ones"),
    variant: str = typer.Option("single-6c", help="an8Flower variant: single-6c or double-12c"),
    per_class: int = typer.Option(120, "--per-class", help="rendered images per class (train + test)"),
    size: int = typer.Option(64, help="image side in pixels"),
    epochs: int = typer.Option(10, help="training epochs"),
    mu: float = typer.Option(5.0, help="mu-LASSO L1 budget"),
    seed: int = typer.Option(0),
) -> None:
    """The whole method end to end on a small an8Flower set; ends with the report's path."""
    from vebi.demo import DemoConfig, run_demo
    from vebi.errors import VebiError

    if variant not in ("single-6c", "double-12c"):
        raise VebiError(f"--variant must be single-6c or double-12c, not {variant!r}")
    report = run_demo(out, DemoConfig(variant, per_class, size, seed, epochs, mu), fresh=fresh)
    typer.echo(f"report: {report.resolve()}")
