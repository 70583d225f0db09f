"""``vebi explain``: per image, a PNG panel and a JSON with the numbers of its explanation."""

from __future__ import annotations

from pathlib import Path

import typer

from vebi.cli._app import app
from vebi.cli.common import DeviceOpt, TrustOpt, batch_size_option


@app.command("explain")
def explain_command(
    run: Path = typer.Argument(..., help="run folder with a relevance fit (`vebi collect`, `vebi fit`)"),
    images: list[Path] = typer.Argument(..., help="image files to explain"),
    out: Path | None = typer.Option(None, "-o", "--out", help="where to write; the folder for IMAGE.png panels and IMAGE.json "
                                    "(default: RUN/explanations, RUN/explanations/METHOD for other methods; "
                                    "where `vebi report RUN` finds them)"),
    method: str = typer.Option("vebi", "--method", "-m", help="explanation method; vebi, vebi_nofix or a baseline "
                               "(guided_backprop, deconvnet, grad_cam, grad_cam_plus_plus, integrated_gradients, "
                               "activation_map)"),
    target: str | None = typer.Option(None, "--target", "-t", help="class name or model output index to "
                                      "explain (default: the prediction); a number is an output index, write "
                                      "name:243 for a class named 243 (index:243 is explicit too)"),
    num_features: int = typer.Option(3, "--num-features", "-k", help="features per explanation; for vebi and activation_map"),
    pool_fix: bool = typer.Option(False, "--pool-fix/--no-pool-fix", help="vebi: route pooled signals to the "
                                  "window's argmax, overwriting"),
    batch_size: int = batch_size_option(16),
    device: str = DeviceOpt,
    trust_model: bool = TrustOpt,
) -> None:
    """Explain predictions by their top relevant features.

    For each IMAGE the model's prediction, its top contributing features with their heatmaps and
    the combined map (or a baseline's map with --method); a PNG panel, JSON and maps per image.
    """
    from vebi.pipeline import explain_files

    for done in explain_files(run, images, method=method, out=out, target=target, batch_size=batch_size,
                              device=device, trust_model=trust_model, num_features=num_features, pool_fix=pool_fix):
        if done.explanation is None:
            typer.echo(f"vebi: warning: {done.path}: {done.skipped}", err=True)
        else:
            line = f"{done.path}: {_summary(done.explanation)} -> {done.stem}.png"
            typer.echo(line.encode("utf-8", "backslashreplace").decode("utf-8"))  # file names that are not UTF-8


def _summary(e) -> str:
    text = f"{e.predicted_name or e.predicted} ({e.score:.3f})"
    if e.target != e.predicted:
        text += f", explaining {e.target_name}"
    if e.features:
        text += "; " + ", ".join(f"{f.layer} c{f.channel} r={f.contribution:.3g}" for f in e.features)
    return text
