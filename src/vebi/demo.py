"""``vebi demo``: the whole method end to end on a small generated an8Flower set.

Stages (each one library call over plain files, so every stage's output can be inspected and
rerun on its own with the matching ``vebi`` command): render data -> train the CNN -> collect
statistics -> fit mu-LASSO -> interpret -> explain sample test images (vebi and baselines) ->
evaluate -> HTML report. A stage is skipped when its record in ``OUT/stages/`` holds the same
key, a hash of its options and of the keys of the stages it reads, so a rerun with the same
options reuses finished stages and a changed option reruns that stage and everything after it.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import typer

from vebi.errors import VebiError
from vebi.io.atomic import write_text

BASELINES: tuple[str, ...] = ("grad_cam", "grad_cam_plus_plus", "guided_backprop", "activation_map")


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of the demo run (defaults: the evaluation's image size, 250 renders per class, 10
    epochs where ``vebi train`` runs 12; :data:`QUICK` is a first look). The evaluate stage also runs
    the cascading randomisation sanity check on ``sanity_images`` images (0: not at all)."""

    variant: str = "single-6c"
    per_class: int = 250
    size: int = 112
    seed: int = 0
    # 10 epochs: over seeds 0-2 the same test accuracy and mean IoUs as 12, 6 s sooner (see the README)
    epochs: int = 10
    mu: float = 5.0
    top_k: int = 100
    explain_images: int = 12
    # a class-balanced 240 of the 300 test images: mean IoUs within 0.003 of all 300's, 2-5 s sooner
    eval_images: int = 240
    sanity_images: int = 6
    eval_methods: tuple[str, ...] | None = None  # None: every registered method
    eval_steps: int = 10  # steps of the deletion/insertion curves
    eval_faithfulness_images: int | None = 48  # images of the deletion/insertion curves (None: all evaluated)
    # per method, options other than its defaults (integrated gradients: 8 Gauss-Legendre nodes
    # instead of 50: on the demo's network the same mean IoU to 0.001 at a quarter of the cost)
    eval_method_options: Mapping[str, Mapping[str, Any]] = field(
        default_factory=lambda: {"integrated_gradients": {"steps": 8}})

    def evaluated_method_options(self) -> dict[str, dict[str, Any]]:
        """:attr:`eval_method_options` of the methods the evaluation runs."""
        return {name: dict(values) for name, values in self.eval_method_options.items()
                if self.eval_methods is None or name in self.eval_methods}


QUICK = DemoConfig(per_class=100, size=64, epochs=12, top_k=30, explain_images=6, eval_images=48, sanity_images=0,
                   eval_methods=("vebi", "vebi_paper", "grad_cam", "guided_backprop"), eval_steps=5,
                   eval_faithfulness_images=None)


@dataclass(frozen=True)
class Stage:
    """One step of the demo (a key of :data:`STEPS`), its options and the stages whose results it reads."""

    name: str
    step: str
    options: Mapping[str, Any]
    reads: tuple[str, ...]


def _key(stage: Stage, keys: dict[str, str]) -> str:
    payload = json.dumps({"step": stage.step, "options": stage.options, "reads": [keys[r] for r in stage.reads]},
                         sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _sample_images(test_root: Path, per_class: int) -> list[str]:
    """The first ``per_class`` test images of each class (sorted names: reproducible)."""
    out: list[str] = []
    for cls in sorted(p for p in test_root.iterdir() if p.is_dir()):
        out += [str(p) for p in sorted(cls.glob("*.png"))[:per_class]]
    return out


# what the stages after rendering import: torch, torchvision and matplotlib, ~5 s of one core
_LATER_IMPORTS: tuple[str, ...] = ("vebi.an8flower.train", "vebi.pipeline", "vebi.evaluate.runner",
                                   "vebi.evaluate.output", "vebi.report")


@contextlib.contextmanager
def _importing(modules: Sequence[str]) -> Iterator[None]:
    """Import ``modules`` in a background thread for the duration of the block (joined at its end).

    The block's work must not import them itself; the render stage's is done by worker processes.
    A module that fails to import here is left to the stage that needs it, which reports the error.
    """
    def load() -> None:
        for module in modules:
            with contextlib.suppress(Exception):
                importlib.import_module(module)

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    try:
        yield
    finally:
        thread.join()


def _render(out: str, variant: str, per_class: int, size: int, seed: int, sheet: str) -> None:
    from vebi.an8flower import DatasetConfig, contact_sheet, generate, load_variant

    with _importing(_LATER_IMPORTS):  # while the render processes work, this one loads what training needs
        generate(out, DatasetConfig(load_variant(variant), per_class, size, seed))
    contact_sheet(out, sheet)


def _train(data: str, out: str, epochs: int, seed: int) -> None:
    from vebi.an8flower.train import TrainConfig, train
    from vebi.run import resolve_device

    train(data, out, TrainConfig(epochs=epochs, seed=seed), device=resolve_device("auto"))


def _evaluate(run: str, **options: Any) -> None:
    from vebi.evaluate.output import write_evaluation
    from vebi.evaluate.runner import evaluate_run

    write_evaluation(evaluate_run(run, **options), Path(run) / "evaluation")


def _report(run: str) -> None:
    from vebi.report import build_report

    build_report(run)


def _pipeline(name: str) -> Callable[..., Any]:
    def call(**options: Any) -> Any:
        from vebi import pipeline

        return getattr(pipeline, name)(**options)

    return call


STEPS: dict[str, Callable[..., Any]] = {
    "an8flower": _render, "train": _train, "collect": _pipeline("collect_run"), "fit": _pipeline("fit_run"),
    "interpret": _pipeline("interpret_run"), "explain": _pipeline("explain_files"), "evaluate": _evaluate,
    "report": _report,
}


def run_stage(stage: Stage) -> None:
    """Run one stage's step with its options."""
    STEPS[stage.step](**stage.options)


def stages(cfg: DemoConfig, out: Path) -> list[Stage | Callable[[], Stage]]:
    data, model, run = out / "data", out / "model", out / "run"
    train, test = data / "images" / "train", data / "images" / "test"
    classes = 6 if cfg.variant == "single-6c" else 12
    per_class = max(1, cfg.explain_images // classes)

    def collect() -> Stage:
        info = json.loads((model / "model.json").read_text())
        return Stage("collect", "collect", {"out": str(run), "model": info["factory"], "data": str(train),
                                            "weights": str(model / "model.pt"), "model_args": info["model_args"],
                                            "top_k": cfg.top_k}, ("data", "train"))

    def explain(method: str) -> Callable[[], Stage]:
        def make() -> Stage:
            name = "explain" if method == "vebi" else f"explain-{method}"
            reads = ("fit", "interpret") if method == "vebi" else ("fit",)
            return Stage(name, "explain", {"run_dir": str(run), "images": _sample_images(test, per_class),
                                           "method": method}, reads)
        return make

    return [
        Stage("data", "an8flower", {"out": str(data), "variant": cfg.variant, "per_class": cfg.per_class,
                                    "size": cfg.size, "seed": cfg.seed, "sheet": str(out / "contact-sheet.png")}, ()),
        Stage("train", "train", {"data": str(data), "out": str(model), "epochs": cfg.epochs, "seed": cfg.seed},
              ("data",)),
        collect,
        Stage("fit", "fit", {"run_dir": str(run), "mu": cfg.mu}, ("collect",)),
        Stage("interpret", "interpret", {"run_dir": str(run), "data": str(train), "top_k": cfg.top_k}, ("fit",)),
        explain("vebi"),
        *[explain(n) for n in BASELINES],
        Stage("evaluate", "evaluate", {"run": str(run), "data": str(test), "masks": str(data / "masks" / "test"),
                                       "max_images": cfg.eval_images, "seed": cfg.seed, "sanity": cfg.sanity_images > 0,
                                       "sanity_images": max(cfg.sanity_images, 1), "steps": cfg.eval_steps,
                                       "faithfulness_images": cfg.eval_faithfulness_images,
                                       "method_options": cfg.evaluated_method_options(),
                                       "methods": None if cfg.eval_methods is None else list(cfg.eval_methods)},
              ("fit",)),
        Stage("report", "report", {"run": str(run)},
              ("fit", "interpret", "explain", *[f"explain-{n}" for n in BASELINES], "evaluate")),
    ]


def run_demo(out: Path, cfg: DemoConfig = DemoConfig(), *, fresh: bool = False,
             echo: Callable[[str], None] = typer.echo) -> Path:
    """Run (or resume) every stage into ``out``; returns the report's path."""
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
        echo(f"{label}: {stage.step} ...")
        t0 = time.perf_counter()
        try:
            run_stage(stage)
        except VebiError as exc:
            raise VebiError(f"demo stage {stage.name!r} failed ({exc}); fix the cause and rerun `vebi demo`") from None
        write_text(record, json.dumps({"key": key, "step": stage.step, "options": dict(stage.options),
                                       "seconds": round(time.perf_counter() - t0, 1)}, indent=2) + "\n")
        echo(f"{label}: {time.perf_counter() - t0:.0f} s")
    report = out / "run" / "report" / "index.html"
    echo(f"demo finished in {time.perf_counter() - started:.0f} s")
    return report
