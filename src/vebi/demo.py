"""``vebi demo``: the whole method end to end on a small generated an8Flower set.

Stages (each a ``vebi`` command over plain files, so every stage's output can be inspected and
rerun on its own): render data -> train the CNN -> collect statistics -> fit mu-LASSO ->
interpret -> explain sample test images (vebi and baselines) -> evaluate -> HTML report.
A stage is skipped when its record in ``OUT/stages/`` holds the same key, a hash of its
arguments and of the keys of the stages it reads, so a rerun with the same options reuses
finished stages and a changed option reruns that stage and everything after it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import typer

from vebi.io.atomic import write_text
from vebi.errors import VebiError

BASELINES: tuple[str, ...] = ("grad_cam", "grad_cam_plus_plus", "guided_backprop", "activation_map")


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of the demo run.

    The defaults (the evaluation's image size, 300 renders per class, ``vebi train``'s 12 epochs)
    took 139 s on an idle 2-core CPU, well inside the 15-minute target on a busy one.
    """

    variant: str = "single-6c"
    per_class: int = 300
    size: int = 112
    seed: int = 0
    epochs: int = 12
    mu: float = 5.0
    top_k: int = 100
    explain_images: int = 12
    eval_images: int = 300


@dataclass(frozen=True)
class Stage:
    """One ``vebi`` command of the demo and the stages whose results it reads."""

    name: str
    args: tuple[str, ...]
    reads: tuple[str, ...]


def _key(stage: Stage, keys: dict[str, str]) -> str:
    payload = json.dumps({"args": stage.args, "reads": [keys[r] for r in stage.reads]})
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _sample_images(test_root: Path, per_class: int) -> list[str]:
    """The first ``per_class`` test images of each class (sorted names: reproducible)."""
    out: list[str] = []
    for cls in sorted(p for p in test_root.iterdir() if p.is_dir()):
        out += [str(p) for p in sorted(cls.glob("*.png"))[:per_class]]
    return out


def stages(cfg: DemoConfig, out: Path) -> list[Stage | Callable[[], Stage]]:
    data, model, run = out / "data", out / "model", out / "run"
    train, test = data / "images" / "train", data / "images" / "test"
    classes = 6 if cfg.variant == "single-6c" else 12
    per_class = max(1, cfg.explain_images // classes)

    def collect() -> Stage:
        info = json.loads((model / "model.json").read_text())
        model_args = [a for k, v in info["model_args"].items() for a in ("--model-arg", f"{k}={json.dumps(v)}")]
        return Stage("collect", ("collect", info["factory"], str(train), "-o", str(run), "--weights",
                                 str(model / "model.pt"), *model_args, "--top-k", str(cfg.top_k)),
                     ("data", "train"))

    def explain() -> Stage:
        images = _sample_images(test, per_class)
        args: list[str] = ["explain", str(run), *images]  # into run/explanations, where the report looks
        return Stage("explain", tuple(args), ("fit", "interpret"))

    def baselines(name: str) -> Callable[[], Stage]:
        def make() -> Stage:
            images = _sample_images(test, per_class)
            return Stage(f"explain-{name}", ("explain", str(run), *images, "-m", name), ("fit",))
        return make

    return [
        Stage("data", ("an8flower", "--variant", cfg.variant, "--per-class", str(cfg.per_class), "--size",
                       str(cfg.size), "--seed", str(cfg.seed), "-o", str(data), "--sheet",
                       str(out / "contact-sheet.png")), ()),
        Stage("train", ("train", str(data), "-o", str(model), "--epochs", str(cfg.epochs), "--seed",
                        str(cfg.seed)), ("data",)),
        collect,
        Stage("fit", ("fit", str(run), "--mu", str(cfg.mu)), ("collect",)),
        Stage("interpret", ("interpret", str(run), str(train), "--top-k", str(cfg.top_k)), ("fit",)),
        explain,
        *[baselines(n) for n in BASELINES],
        Stage("evaluate", ("evaluate", str(run), str(test), "--masks", str(data / "masks" / "test"),
                           "--max-images", str(cfg.eval_images), "--seed", str(cfg.seed)),
              ("fit",)),
        Stage("report", ("report", str(run)), ("fit", "interpret", "explain", *[f"explain-{n}" for n in BASELINES],
                                               "evaluate")),
    ]


def run_demo(out: Path, cfg: DemoConfig = DemoConfig(), *, fresh: bool = False,
             echo: Callable[[str], None] = typer.echo) -> Path:
    """Run (or resume) every stage into ``out``; returns the report's path."""
    from vebi.cli._app import main

    out = Path(out)
    records = out / "stages"
    if fresh and records.exists():
        shutil.rmtree(records)
    records.mkdir(parents=True, exist_ok=True)
    write_text(out / "demo.json", json.dumps(asdict(cfg), indent=2) + "\n")
    keys: dict[str, str] = {}
    plan = stages(cfg, out)
    started = time.perf_counter()
    for number, item in enumerate(plan, start=1):
        stage = item() if callable(item) else item
        key = _key(stage, keys)
        keys[stage.name] = key
        record = records / f"{stage.name}.json"
        label = f"[{number}/{len(plan)}] {stage.name}"
        if record.is_file() and json.loads(record.read_text()).get("key") == key:
            echo(f"{label}: done before, reused")
            continue
        echo(f"{label}: vebi {' '.join(stage.args[:1])} ...")
        t0 = time.perf_counter()
        code = main(list(stage.args))
        if code != 0:
            raise VebiError(f"demo stage {stage.name!r} failed (exit {code}); fix the cause and rerun `vebi demo`")
        write_text(record, json.dumps({"key": key, "args": list(stage.args),
                                       "seconds": round(time.perf_counter() - t0, 1)}, indent=2) + "\n")
        echo(f"{label}: {time.perf_counter() - t0:.0f} s")
    report = out / "run" / "report" / "index.html"
    echo(f"demo finished in {time.perf_counter() - started:.0f} s")
    return report
