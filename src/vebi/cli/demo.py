"""``vebi demo``: generate, train, collect, fit, interpret, explain, evaluate and report in one go."""

from __future__ import annotations

from pathlib import Path

import typer

from vebi.cli._app import app
from vebi.cli.common import seed_option
from vebi.demo import QUICK as _QUICK
from vebi.demo import DemoConfig

_DEFAULT = DemoConfig()


@app.command()
def demo(
    out: Path | None = typer.Option(None, "-o", "--out", help="where to write; every stage's output "
                                    "(default runs/demo, runs/demo-quick with --quick)"),
    quick: bool = typer.Option(False, "--quick", help=f"a first look: {_QUICK.per_class} renders per class at "
                               f"{_QUICK.size} px, {_QUICK.epochs} epochs, {_QUICK.eval_images} evaluated images"),
    fresh: bool = typer.Option(False, "--fresh", help="rerun every stage instead of reusing finished ones"),
    variant: str = typer.Option(_DEFAULT.variant, "--variant", help="an8Flower variant; single-6c or double-12c"),
    per_class: int | None = typer.Option(None, "--per-class", show_default=False,
                                         help=f"images per class, train + test; rendered (default {_DEFAULT.per_class})"),
    size: int | None = typer.Option(None, "--size", show_default=False,
                                    help=f"image side in pixels; of the rendered images (default {_DEFAULT.size})"),
    epochs: int | None = typer.Option(None, "--epochs", show_default=False,
                                      help=f"training epochs (default {_DEFAULT.epochs})"),
    mu: float = typer.Option(_DEFAULT.mu, "--mu", help="mu-LASSO L1 budget of each class's weights; smaller: fewer "
                             "relevant features (5, as the method's authors used for an8Flower)"),
    explain_images: int | None = typer.Option(None, "--explain-images", show_default=False,
                                              help="test images explained in the report, spread over the classes "
                                                   f"(default {_DEFAULT.explain_images})"),
    eval_images: int | None = typer.Option(None, "--eval-images", show_default=False,
                                           help=f"test images the evaluation scores (default {_DEFAULT.eval_images})"),
    seed: int = seed_option("the data, the training and the evaluation's sampling"),
) -> None:
    """Run everything on a small an8Flower set.

    Render, train, collect, fit, interpret, explain, evaluate and report; ends with the report's path.
    """
    from dataclasses import replace

    from vebi.demo import run_demo
    from vebi.errors import VebiError

    if variant not in ("single-6c", "double-12c"):
        raise VebiError(f"--variant must be single-6c or double-12c, not {variant!r}")
    for name, value in (("--explain-images", explain_images), ("--eval-images", eval_images)):
        if value is not None and value < 1:
            raise VebiError(f"{name} must be at least 1, not {value}")
    given = {"per_class": per_class, "size": size, "epochs": epochs, "explain_images": explain_images,
             "eval_images": eval_images}
    config = replace(_QUICK if quick else _DEFAULT, variant=variant, mu=mu, seed=seed,
                     **{k: v for k, v in given.items() if v is not None})
    folder = out if out is not None else Path("runs/demo-quick" if quick else "runs/demo")
    report = run_demo(folder, config, fresh=fresh)
    typer.echo(f"report: {report.resolve()}")
