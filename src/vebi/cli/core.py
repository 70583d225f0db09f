"""``vebi layers``, ``vebi collect`` and ``vebi fit``: the core pass and the mu-LASSO fit."""

from __future__ import annotations

from pathlib import Path

import typer

from vebi.cli._app import app
from vebi.cli.common import (DeviceOpt, ModelArg, ModelArgsOpt, ProgressOpt, WeightsOpt, WorkersOpt,
                             batch_size_option)
from vebi.errors import VebiError


@app.command()
def layers(
    model: str = ModelArg,
    weights: str | None = WeightsOpt,
    model_arg: list[str] | None = ModelArgsOpt,
    size: int | None = typer.Option(None, "--size", help="image side in pixels; of the example input that finds "
                                    "output shapes (default: the torchvision weights' crop size, else 64)"),
    all_layers: bool = typer.Option(False, "--all", help="list every module, not only those with 2-D+ maps"),
) -> None:
    """List the model's layers; '*' marks the default set.

    Each layer's name, type and output shape for an example input of --size pixels.
    """
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
    out: Path = typer.Option(..., "-o", "--out", help="where to write; the run folder"),
    weights: str | None = WeightsOpt,
    model_arg: list[str] | None = ModelArgsOpt,
    layer: list[str] | None = typer.Option(None, "--layer", "-l", help="layer name or glob (repeatable); default set if none"),
    response: str = typer.Option("energy", help="energy, max or mean"),
    labels: str = typer.Option("true", help="true (ground truth) or predicted"),
    top_k: int = typer.Option(100, "--top-k", help="top images per feature; kept for the interpretations"),
    size: int | None = typer.Option(None, "--size", help="image side in pixels; images are resized and centre-cropped "
                                    "to it (default: with torchvision weights their own resize and crop, e.g. "
                                    "256 -> 224, else the images' own size, which must then be the same for all)"),
    normalize: str = typer.Option("auto", help="auto (imagenet for torchvision models), imagenet or none"),
    classes: Path | None = typer.Option(None, "--classes", help="which model output each class folder is: a text "
                                        "file with one class name per model output (line i names output i), or "
                                        "JSON {folder: output index}; default: folders named by ImageNet WNID, "
                                        "the torchvision weights' categories, folders named by output index, else sorted folders = outputs "
                                        "0..C-1"),
    batch_size: int = batch_size_option(32),
    workers: int = WorkersOpt,
    device: str = DeviceOpt,
    checkpoint_every: int = typer.Option(0, "--checkpoint-every", help="save the running statistics every N batches "
                                         "to OUT/checkpoints; the same command then resumes from there (0: never)"),
    gram_dtype: str = typer.Option("float64", "--gram-dtype", help="float64, or float32 for half the memory of G"),
    memory_budget: str | None = typer.Option(None, "--memory-budget", help="memory vebi may take; for the statistics of "
                                             "each process, e.g. 8GiB (default: $VEBI_MEMORY_BUDGET or the free memory)"),
    progress: bool = ProgressOpt,
) -> None:
    """One pass over the images: statistics of every feature.

    Responses, streaming statistics and top images per feature of DATA, saved to the run folder OUT.

    Under `torchrun --nproc-per-node N vebi collect ...` each process takes every N-th image and
    process 0 writes the one result (gloo on CPU, nccl on GPUs).
    """
    from vebi.io.folders import data_folder

    if batch_size < 1 or top_k < 1 or checkpoint_every < 0:
        raise VebiError("--batch-size and --top-k must be at least 1, --checkpoint-every at least 0")
    if gram_dtype not in ("float64", "float32"):
        raise VebiError(f"--gram-dtype must be float64 or float32, not {gram_dtype!r}")
    data_folder(data)  # a wrong folder is told before torch is imported

    import torch

    from vebi.core import distributed
    from vebi.models import parse_model_args
    from vebi.pipeline import collect_run

    stats = collect_run(out, model, data, weights=weights, model_args=parse_model_args(model_arg), size=size,
                        normalize=normalize, classes=classes, batch_size=batch_size, workers=workers, device=device,
                        checkpoint_every=checkpoint_every, layers=layer or None, response=response, labels=labels,
                        top_k=top_k, gram_dtype=getattr(torch, gram_dtype), memory_budget=memory_budget,
                        progress=progress)
    where = distributed.current()
    if where.is_main:
        acc = f", accuracy {stats.accuracy:.3f}" if stats.accuracy is not None else ""
        procs = f" in {where.world_size} processes" if where.world_size > 1 else ""
        typer.echo(f"collected {stats.count} images x {stats.space.size} features "
                   f"({len(stats.space.layers)} layers){procs}{acc} -> {out}")


@app.command()
def fit(
    run: Path = typer.Argument(..., help="run folder written by `vebi collect`"),
    mu: float = typer.Option(10.0, "--mu", help="mu-LASSO L1 budget of each class's weights; smaller: fewer "
                             "relevant features (10 is the method's default; its authors used 5 for an8Flower)"),
    solver: str = typer.Option("auto", help="auto (SPAMS on the CPU when installed, else vebi's own homotopy), "
                               "spams or torch"),
    device: str = typer.Option("cpu", "--device", help="where to compute: cpu, cuda, cuda:N or auto; a GPU runs "
                               "the torch solver"),
    features_per_class: int | None = typer.Option(None, "--features-per-class",
                                                  help="find the mu that gives about N relevant features per class "
                                                       "(on average; replaces --mu; about 10-15 fits; default: none, --mu is used)"),
    memory_budget: str | None = typer.Option(None, "--memory-budget", help="memory vebi may take; for G and the "
                                             "solver, e.g. 8GiB (default: $VEBI_MEMORY_BUDGET or the free memory)"),
    progress: bool = ProgressOpt,
) -> None:
    """Fit the mu-LASSO: the relevant features of each class.

    From the run's saved statistics, without another pass over the images.
    """
    from vebi.pipeline import fit_run

    relevance = fit_run(run, mu, features_per_class=features_per_class, solver=solver, device=device,
                        progress=progress, memory_budget=memory_budget)
    for name, count in zip(relevance.class_names, relevance.relevant_counts(), strict=True):
        typer.echo(f"{name}: {count} relevant features")
    chosen = f", chosen for about {features_per_class} features per class" if features_per_class else ""
    typer.echo(f"relevance (mu={relevance.mu:.4g}{chosen}) -> {run}")
