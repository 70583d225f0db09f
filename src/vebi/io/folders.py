"""Run and data folders, checked, and the JSON metadata of a run (every file carries ``schema``).

Without torch, so that a command given a wrong folder says so before torch is imported (seconds
on a small machine); the tensors are :mod:`vebi.io.artifacts`'.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vebi.errors import VebiError
from vebi.io.atomic import write_text

SCHEMA_VERSION = 1


def write_json(path: Path, data: dict[str, Any]) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: Path, kind: str) -> dict[str, Any]:
    """The JSON object in ``path``, of this schema version; ``kind`` names what the file holds in the errors."""
    if not path.is_file():
        raise VebiError(f"{path} not found: is this a vebi run folder with {kind}?")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise VebiError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise VebiError(f"{path} holds {type(data).__name__ if data is not None else 'null'}, not a JSON object")
    schema = data.get("schema")
    if schema != SCHEMA_VERSION:
        raise VebiError(f"{path} has schema version {schema}, this vebi reads version {SCHEMA_VERSION}; "
                        "re-run the step that wrote it")
    return data


def run_folder(path: str | Path) -> Path:
    """``path``, checked to be a folder with the statistics of a collection pass (``stats.json``)."""
    run = Path(path)
    if not run.is_dir():
        raise VebiError(f"run folder {run} not found")
    if not (run / "stats.json").is_file():
        raise VebiError(f"{run} is not a vebi run folder (no stats.json; run `vebi collect` first)")
    return run


def data_folder(path: str | Path) -> Path:
    """``path``, checked to be a folder (of one sub-folder per class)."""
    root = Path(path)
    if not root.exists():
        raise VebiError(f"data folder {root} not found")
    if not root.is_dir():
        raise VebiError(f"{root} is not a folder (expected one sub-folder per class)")
    return root


def load_run_info(run_dir: str | Path) -> dict[str, Any]:
    """``run.json``, checked to hold a model {spec, weights, args}, data {path, size, ...} and layers."""
    path = Path(run_dir) / "run.json"
    info = read_json(path, "run information (run `vebi collect` first)")
    model, data = info.get("model"), info.get("data")
    problems = [
        not isinstance(model, dict) or not isinstance(model.get("spec"), str)
        or not isinstance(model.get("weights"), (str, type(None))) or not isinstance(model.get("args", {}), dict),
        not isinstance(data, dict) or not isinstance(data.get("path"), str)
        or not isinstance(data.get("size"), (int, type(None))) or not isinstance(data.get("channels", 3), int),
        not isinstance(info.get("layers", []), list),
    ]
    if any(problems):
        part = ("model", "data", "layers")[problems.index(True)]
        raise VebiError(f"{path} has a missing or malformed '{part}' entry; re-run `vebi collect`")
    return info
