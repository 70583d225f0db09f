"""Options shared by the sub-commands."""

from __future__ import annotations

import typer

ModelArg = typer.Argument(..., help="torchvision:NAME, package.module:factory or path/to/file.py:factory")
WeightsOpt = typer.Option(None, "--weights", "-w", help="state-dict file (weights_only) or torchvision weights name")
ModelArgsOpt = typer.Option(None, "--model-arg", help="key=value passed to the model factory (repeatable)")
DeviceOpt = typer.Option("auto", "--device", help="cpu, cuda, cuda:N or auto")
