"""``vebi layers``, ``vebi collect`` and ``vebi fit``: the core pass and the mu-LASSO fit."""

from __future__ import annotations

from pathlib import Path

import typer

from vebi.cli._app import app
from vebi.cli.common import DeviceOpt, ModelArg, ModelArgsOpt, WeightsOpt
from vebi.errors import VebiError


@app.command()
def layers(
    model: str = ModelArg,
    weights: str | None = WeightsOpt,
    model_arg: list[str] | None = ModelArgsOpt,
    size: int | None = typer.Option(None, help="input size of the example pass that finds output shapes "
                                    "(default: the torchvision weights' crop size, else 64)"),
    all_layers: bool = typer.Option(False, "--all", help="list every module, not only those with 2-D+ maps"),
) -> None:
    """List the model's layers: name, type, output shape; '*' marks the default layer set."""
    import torch

    from vebi.layers import first_conv_in_channels, list_layers
    from vebi.models import load_model, output_count, parse_model_args, torchvision_weights, weights_preprocessing

    net = load_model(model, weights, parse_model_args(model_arg))
    if size is None:
        enum = torchvision_weights(model, weights, lambda: output_count(net))
        size = weights_preprocessing(enum)["size"] if enum is not None else 64
    example = torch.zeros(1, first_conv_in_channels(net), size, size)
    try:
        infos = list_layers(net, example)
    except RuntimeError as exc:
        raise VebiError(f"the example pass at {size}x{size} failed ({str(exc).splitlines()[0]}); try --size") from None
    width = max(len(i.name) for i in infos)
    for info in infos:
        shape = info.output_shape
        if not all_layers and (shape is None or len(shape) < 3) and not info.default:
            continue
        mark = "*" if info.default else " "
        typer.echo(f"{mark} {info.name:<{width}}  {info.type_name:<22} {'x'.join(map(str, shape or ())) or '-'}")


@app.command()
def collect(
    model: str = ModelArg,
    data: Path = typer.Argument(..., help="image folder, one sub-folder per class"),
    out: Path = typer.Option(..., "-o", "--out", help="run folder to write"),
    weights: str | None = WeightsOpt,
    model_arg: list[str] | None = ModelArgsOpt,
    layer: list[str] | None = typer.Option(None, "--layer", "-l", help="layer name or glob (repeatable); default set if none"),
    response: str = typer.Option("energy", help="energy, max or mean"),
    labels: str = typer.Option("true", help="true (ground truth) or predicted"),
    top_k: int = typer.Option(100, "--top-k", help="top images kept per feature"),
    size: int | None = typer.Option(None, help="resize + centre-crop images to SIZE (default with torchvision "
                                    "weights: their own resize and crop, e.g. 256 -> 224)"),
    normalize: str = typer.Option("auto", help="auto (imagenet for torchvision models), imagenet or none"),
    classes: Path | None = typer.Option(None, "--classes", help="which model output each class folder is: a text "
                                        "file with one class name per model output (line i names output i), or "
                                        "JSON {folder: output index}; default: the torchvision weights' "
                                        "categories, folders named by output index, else sorted folders = outputs "
                                        "0..C-1"),
    batch_size: int = typer.Option(32, "--batch-size", "-b"),
    workers: int = typer.Option(0, help="DataLoader worker processes"),
    device: str = DeviceOpt,
    checkpoint_every: int = typer.Option(0, "--checkpoint-every", help="save the running statistics every N batches "
                                         "to OUT/checkpoints; the same command then resumes from there (0: never)"),
    gram_dtype: str = typer.Option("float64", "--gram-dtype", help="float64, or float32 for half the memory of G"),
    memory_budget: str | None = typer.Option(None, "--memory-budget", help="memory the statistics may take per "
                                             "process, e.g. 8GiB (default: $VEBI_MEMORY_BUDGET or the free memory)"),
) -> None:
    """One pass over DATA: responses, streaming statistics and top images per feature, saved to OUT.

    Under `torchrun --nproc-per-node N vebi collect ...` each process takes every N-th image and
    process 0 writes the one result (gloo on CPU, nccl on GPUs).
    """
    import torch

    from vebi.core import distributed
    from vebi.models import parse_model_args
    from vebi.pipeline import collect_run

    if batch_size < 1 or top_k < 1 or checkpoint_every < 0:
        raise VebiError("--batch-size and --top-k must be at least 1, --checkpoint-every at least 0")
    if gram_dtype not in ("float64", "float32"):
        raise VebiError(f"--gram-dtype must be float64 or float32, not {gram_dtype!r}")
    stats = collect_run(out, model, data, weights=weights, model_args=parse_model_args(model_arg), size=size,
                        normalize=normalize, classes=classes, batch_size=batch_size, workers=workers, device=device,
                        checkpoint_every=checkpoint_every, layers=layer or None, response=response, labels=labels,
                        top_k=top_k, gram_dtype=getattr(torch, gram_dtype), memory_budget=memory_budget)
    where = distributed.current()
    if where.is_main:
        acc = f", accuracy {stats.accuracy:.3f}" if stats.accuracy is not None else ""
        procs = f" in {where.world_size} processes" if where.world_size > 1 else ""
        typer.echo(f"collected {stats.count} images x {stats.space.size} features "
                   f"({len(stats.space.layers)} layers){procs}{acc} -> {out}")


@app.command()
def fit(
    run: Path = typer.Argument(..., help="run folder written by `vebi collect`"),
    mu: float = typer.Option(10.0, help="L1 budget of each class's weights (sparsity)"),
    solver: str = typer.Option("auto", help="auto (SPAMS on the CPU when installed, else vebi's own homotopy), "
                               "spams or torch"),
    device: str = typer.Option("cpu", "--device", help="where the solver runs: cpu, or cuda / cuda:N / auto "
                               "for the torch solver on a GPU"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="progress bar over the classes"),
) -> None:
    """Fit mu-LASSO relevance from the saved statistics (no new pass over the images)."""
    from vebi.pipeline import fit_run

    relevance = fit_run(run, mu, solver=solver, device=device, progress=progress)
    for name, count in zip(relevance.class_names, relevance.relevant_counts(), strict=True):
        typer.echo(f"{name}: {count} relevant features")
    typer.echo(f"relevance (mu={mu:g}) -> {run}")
