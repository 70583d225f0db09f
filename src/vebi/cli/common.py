"""Options and helpers shared by the sub-commands: building the model and data of a run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import typer
from torch import nn

from vebi.errors import VebiError

ModelArg = typer.Argument(..., help="torchvision:NAME, package.module:factory or path/to/file.py:factory")
WeightsOpt = typer.Option(None, "--weights", "-w", help="state-dict file (weights_only) or torchvision weights name")
ModelArgsOpt = typer.Option(None, "--model-arg", help="key=value passed to the model factory (repeatable)")
DeviceOpt = typer.Option("auto", "--device", help="cpu, cuda, cuda:N or auto")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise VebiError(f"unknown device {name!r}; use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise VebiError("--device cuda was asked for but no CUDA device is available")
    return dev


def model_info(spec: str, weights: str | None, model_args: list[str] | None) -> dict[str, Any]:
    from vebi.models import parse_model_args

    return {"spec": spec, "weights": str(Path(weights).resolve()) if weights and Path(weights).exists() else weights,
            "args": parse_model_args(model_args)}


def build_model(info: dict[str, Any]) -> nn.Module:
    from vebi.models import load_model

    return load_model(info["spec"], info.get("weights"), info.get("args"))


def data_info(model: nn.Module, spec: str, path: str, size: int | None, normalize: str) -> dict[str, Any]:
    from vebi.data import IMAGENET_MEAN, IMAGENET_STD
    from vebi.layers import first_conv_in_channels

    if normalize == "auto":
        normalize = "imagenet" if spec.startswith("torchvision:") else "none"
    if normalize not in ("imagenet", "none"):
        raise VebiError(f"--normalize must be auto, imagenet or none, not {normalize!r}")
    imagenet = normalize == "imagenet"
    return {"path": str(Path(path).resolve()), "size": size, "channels": first_conv_in_channels(model),
            "mean": list(IMAGENET_MEAN) if imagenet else None, "std": list(IMAGENET_STD) if imagenet else None}


def build_dataset(info: dict[str, Any], path: str | None = None, with_index: bool = True):
    from vebi.data import check_uniform_size, image_folder

    ds = image_folder(path or info["path"], info.get("size"), info.get("channels", 3), info.get("mean"),
                      info.get("std"), with_index=with_index)
    check_uniform_size(ds, info.get("size"))
    return ds
