"""``vebi an8flower`` (generate the benchmark, contact sheet) and ``vebi train`` (the small CNN)."""

from __future__ import annotations

from pathlib import Path

import typer

from vebi.cli._app import app
from vebi.cli.common import DeviceOpt, ProgressOpt, batch_size_option, seed_option
from vebi.run import resolve_device


@app.command()
def an8flower(
    out: Path = typer.Option(..., "-o", "--out", help="where to write; the dataset folder (resumed if it holds the same config)"),
    variant: str = typer.Option("single-6c", "--variant", help="an8Flower variant; single-6c, double-12c or the path "
                                "of a JSON variant config"),
    per_class: int = typer.Option(500, "--per-class", help="images per class, train + test; rendered"),
    size: int = typer.Option(112, "--size", help="image side in pixels; of the rendered images"),
    seed: int = seed_option("the dataset: image i is drawn from (seed, i)"),
    test_fraction: float = typer.Option(0.2, "--test-fraction", help="share of each class in the test split"),
    spp: int = typer.Option(9, help="samples per pixel (a square: 4, 9, 16, ...)"),
    workers: int = typer.Option(2, "--workers", help="worker processes; rendering in parallel, one core each (1: in this process)"),
    sheet: Path | None = typer.Option(None, "--sheet", help="also write a contact sheet PNG of test examples "
                                      "(default: none)"),
    sheet_only: bool = typer.Option(False, "--sheet-only", help="only write --sheet from the existing dataset OUT"),
    progress: bool = ProgressOpt,
) -> None:
    """Render the an8Flower benchmark with exact part masks.

    Flowers whose class is the colour of known parts, with a mask of those parts per image.
    """
    from vebi.an8flower import DatasetConfig, contact_sheet, generate, load_variant
    from vebi.errors import VebiError

    if sheet_only:
        if sheet is None:
            raise VebiError("--sheet-only needs --sheet PATH")
        typer.echo(f"wrote {contact_sheet(out, sheet)}")
        return
    config = DatasetConfig(load_variant(variant), per_class, size, seed, test_fraction, spp)
    result = generate(out, config, workers=workers, progress=progress)
    typer.echo(
        f"{result.total} images in {result.root} ({result.rendered} rendered, {result.skipped} already there, "
        f"{result.seconds:.1f} s)"
    )
    if sheet is not None:
        typer.echo(f"wrote {contact_sheet(out, sheet)}")


@app.command()
def train(
    data: Path = typer.Argument(..., help="an8Flower dataset folder (images/train, images/test) or a folder with train/ and test/"),
    out: Path = typer.Option(..., "-o", "--out", help="where to write; the folder for model.pt and model.json"),
    epochs: int = typer.Option(12, "--epochs", help="training epochs"),
    batch_size: int = batch_size_option(64),
    lr: float = typer.Option(2e-3, help="Adam learning rate (cosine-decayed to 0)"),
    weight_decay: float = typer.Option(1e-4, "--weight-decay", help="Adam weight decay"),
    shift: int = typer.Option(4, help="random shift augmentation in pixels"),
    seed: int = seed_option("the initialisation, the batch order and the augmentation"),
    width: int = typer.Option(32, help="channels of conv1 (doubling twice towards conv5)"),
    first_stride: int = typer.Option(4, "--first-stride", help="stride of conv1"),
    first_kernel: int = typer.Option(7, "--first-kernel", help="kernel of conv1"),
    batch_norm: bool = typer.Option(True, "--batch-norm/--no-batch-norm", help="batch norm after every conv"),
    shuffle_labels: bool = typer.Option(False, "--shuffle-labels", help="train on permuted labels (the model of the "
                                        "data randomisation sanity check, `vebi evaluate --random-label-weights`)"),
    device: str = DeviceOpt,
    threads: int | None = typer.Option(None, help="torch CPU threads (default: torch's); 1 is fastest on a busy machine"),
    progress: bool = ProgressOpt,
) -> None:
    """Train the small an8Flower CNN.

    The VGG-style vebi.an8flower.net:an8net, seeded; prints its test accuracy.
    """
    import json

    from vebi.an8flower.train import TrainConfig, model_args
    from vebi.an8flower.train import train as run_training

    config = TrainConfig(epochs, batch_size, lr, weight_decay, shift, seed, width, first_stride, first_kernel, batch_norm,
                         shuffle_labels)
    result = run_training(data, out, config, device=resolve_device(device), threads=threads, progress=progress)
    used = model_args(config, len(result.class_names))
    args = " ".join(f"--model-arg {k}={json.dumps(v)}" for k, v in used.items())
    typer.echo(f"test accuracy {result.test_accuracy:.4f}  train accuracy {result.train_accuracy:.4f}  ({result.seconds:.0f} s)")
    typer.echo(f"model: vebi.an8flower.net:an8net --weights {result.model_path} {args}")
