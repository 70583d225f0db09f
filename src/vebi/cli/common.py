"""Options shared by the sub-commands."""

from __future__ import annotations

import typer

ModelArg = typer.Argument(..., help="torchvision:NAME, package.module:factory or path/to/file.py:factory")
WeightsOpt = typer.Option(None, "--weights", "-w", help="state-dict file (weights_only) or torchvision weights name")
ModelArgsOpt = typer.Option(None, "--model-arg", help="key=value passed to the model factory (repeatable)")
DeviceOpt = typer.Option("auto", "--device", help="cpu, cuda, cuda:N or auto")
TrustOpt = typer.Option(False, "--trust-model", help="rebuild the run's model although run.json names a "
                        "module:factory or file.py:factory spec (code that runs): only for run folders you trust")
