"""Options shared by the sub-commands."""

from __future__ import annotations

import typer

ModelArg = typer.Argument(..., help="torchvision:NAME, package.module:factory or path/to/file.py:factory")
WeightsOpt = typer.Option(None, "--weights", "-w", help="model weights; a state-dict file (loaded weights_only) or a "
                          "torchvision weights name in torch's cache (default: the factory's own initialisation)")
ModelArgsOpt = typer.Option(None, "--model-arg", help="key=value passed to the model factory; repeatable, JSON "
                            "values (default: none)")
DeviceOpt = typer.Option("auto", "--device", help="where to compute: cpu, cuda, cuda:N or auto (CUDA when available)")
ProgressOpt = typer.Option(True, "--progress/--no-progress", help="show progress bars")
WorkersOpt = typer.Option(0, "--workers", help="worker processes; DataLoader processes reading the images")


def batch_size_option(default: int) -> typer.models.OptionInfo:
    return typer.Option(default, "--batch-size", "-b", help="images per batch")


def seed_option(what: str) -> typer.models.OptionInfo:
    return typer.Option(0, "--seed", help=f"random seed; of {what}")
TrustOpt = typer.Option(False, "--trust-model", help="trust the run's model spec; rebuild the model although run.json names a "
                        "module:factory or file.py:factory spec (code that runs): only for run folders you trust")
