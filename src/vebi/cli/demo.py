"""``vebi demo``: generate, train, collect, fit, interpret, explain, evaluate and report in one go."""

from __future__ import annotations

from pathlib import Path

import typer

from vebi.cli._app import app
from vebi.demo import DemoConfig

_DEFAULT = DemoConfig()


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), "-o", "--out", help="folder for every stage's output"),
    fresh: bool = typer.Option(False, "--fresh", help="rerun every stage instead of reusing finished ones"),
    variant: str = typer.Option(_DEFAULT.variant, help="an8Flower variant: single-6c or double-12c"),
    per_class: int = typer.Option(_DEFAULT.per_class, "--per-class", help="rendered images per class (train + test)"),
    size: int = typer.Option(_DEFAULT.size, help="image side in pixels"),
    epochs: int = typer.Option(_DEFAULT.epochs, help="training epochs"),
    mu: float = typer.Option(_DEFAULT.mu, help="mu-LASSO L1 budget"),
    explain_images: int = typer.Option(_DEFAULT.explain_images, "--explain-images",
                                       help="test images explained in the report (spread over the classes)"),
    eval_images: int = typer.Option(_DEFAULT.eval_images, "--eval-images", help="test images the evaluation scores"),
    seed: int = typer.Option(_DEFAULT.seed),
) -> None:
    """The whole method end to end on a small an8Flower set; ends with the report's path."""
    from vebi.demo import run_demo
    from vebi.errors import VebiError

    if variant not in ("single-6c", "double-12c"):
        raise VebiError(f"--variant must be single-6c or double-12c, not {variant!r}")
    for name, value in (("--explain-images", explain_images), ("--eval-images", eval_images)):
        if value < 1:
            raise VebiError(f"{name} must be at least 1, not {value}")
    config = DemoConfig(variant, per_class, size, seed, epochs, mu, _DEFAULT.top_k, explain_images, eval_images)
    report = run_demo(out, config, fresh=fresh)
    typer.echo(f"report: {report.resolve()}")
