"""`vebi demo` end to end at a tiny size, and its stage cache."""

import importlib
import json
import sys
from dataclasses import replace

import pytest

import vebi.cli._app as app_module
import vebi.demo as demo_module
from vebi.demo import DemoConfig, run_demo

TINY = DemoConfig(per_class=8, size=32, epochs=1, top_k=5, explain_images=6, eval_images=6)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    lines: list[str] = []
    report = run_demo(out, TINY, echo=lines.append)
    return out, report, lines


def test_demo_runs_every_stage_and_writes_the_report(demo_run):
    out, report, lines = demo_run
    ran = [ln for ln in lines if ln.endswith(" s") and ln.startswith("[")]
    assert len(ran) == 12, lines
    assert report.is_file() and report.name == "index.html"
    html = report.read_text()
    assert "00-red" in html  # the class names of single-6c reach the page
    assert 'id="eval-sanity"' in html and "sanity_cascading.csv" in html  # the sanity checks are on by default
    assert (out / "run" / "evaluation" / "results.json").is_file()
    assert (out / "run" / "interpretation" / "interpretation.json").is_file()
    assert (out / "contact-sheet.png").is_file()
    assert len(list((out / "stages").glob("*.json"))) == 12


def test_rerun_reuses_every_stage(demo_run, monkeypatch):
    out, _, _ = demo_run

    def must_not_run(stage):
        raise AssertionError(f"stage rerun: {stage}")

    monkeypatch.setattr(demo_module, "run_stage", must_not_run)
    lines: list[str] = []
    run_demo(out, TINY, echo=lines.append)
    assert sum("reused" in ln for ln in lines) == 12


def test_changed_option_reruns_that_stage_and_what_follows(demo_run, monkeypatch, tmp_path):
    out, _, _ = demo_run
    snapshot = {p.name: p.read_text() for p in (out / "stages").glob("*.json")}
    called: list[str] = []
    monkeypatch.setattr(demo_module, "run_stage", lambda stage: called.append(stage.step))
    try:
        run_demo(out, replace(TINY, mu=2.0), echo=lambda _: None)
    finally:  # leave the module's run as it was for other tests
        for name, text in snapshot.items():
            (out / "stages" / name).write_text(text)
    assert called[:1] == ["fit"] and "an8flower" not in called and "train" not in called and "collect" not in called
    assert called.count("explain") == 5 and called[-2:] == ["evaluate", "report"]
    assert json.loads((out / "demo.json").read_text())["mu"] == 2.0


@pytest.mark.parametrize("option", ["--explain-images", "--eval-images"])
def test_cli_rejects_an_empty_sample(option, tmp_path, capsys):
    code = app_module.main(["demo", "-o", str(tmp_path / "demo"), option, "0"])
    assert code != 0
    assert f"{option} must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "demo" / "stages").exists()  # refused before any stage ran


def test_quick_profile_is_smaller_and_explicit_options_win(tmp_path, monkeypatch):
    import vebi.cli.demo as cli_demo
    from vebi.demo import QUICK

    seen = []
    monkeypatch.setattr(demo_module, "run_demo", lambda out, cfg, fresh: seen.append((out, cfg)) or out / "r.html")
    assert app_module.main(["demo", "--quick", "-o", str(tmp_path), "--epochs", "2"]) == 0
    (out, cfg), = seen
    assert out == tmp_path and cfg == replace(QUICK, epochs=2)
    assert QUICK.per_class < cli_demo._DEFAULT.per_class and QUICK.eval_images < cli_demo._DEFAULT.eval_images


def test_background_imports_load_modules_and_leave_failures_to_their_stage(tmp_path, monkeypatch):
    (tmp_path / "vebi_probe_module.py").write_text("VALUE = 7\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "vebi_probe_module", raising=False)
    # the missing module first: its failure must not stop the others, and the block's end joins the thread
    with demo_module._importing(["vebi_probe_missing_module", "vebi_probe_module"]):
        pass
    assert sys.modules.pop("vebi_probe_module").VALUE == 7


@pytest.mark.parametrize("name", demo_module._LATER_IMPORTS)
def test_render_stage_preloads_modules_that_exist(name):
    assert importlib.import_module(name).__name__ == name
