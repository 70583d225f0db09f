"""The CLI's core commands end to end, and their one-line errors (exit 2, no traceback)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import tiny_cnn
from vebi.io.artifacts import load_relevance
from vebi.cli import main

FACTORY = "conftest:tiny_cnn"  # importable because pytest puts tests/ on sys.path


def _err(capsys) -> str:
    return capsys.readouterr().err


def test_collect_fit_layers_end_to_end(make_folder, tmp_path, capsys):
    data = make_folder(classes=3, per_class=4, size=12)
    run = tmp_path / "run"
    assert main(["collect", FACTORY, str(data), "-o", str(run), "--top-k", "3", "-b", "5"]) == 0
    assert (run / "stats.safetensors").is_file() and (run / "run.json").is_file()
    assert main(["fit", str(run), "--mu", "2"]) == 0
    out = capsys.readouterr().out
    assert "class0:" in out and "relevance (mu=2)" in out
    assert (run / "relevance.json").is_file()
    spams = load_relevance(run).weights
    assert main(["fit", str(run), "--mu", "2", "--solver", "torch", "--no-progress"]) == 0
    torch.testing.assert_close(load_relevance(run).weights, spams, atol=1e-6, rtol=0)  # same problem, other solver
    assert main(["layers", FACTORY]) == 0
    assert "* 1 " in capsys.readouterr().out


def test_fit_finds_mu_for_a_number_of_features_per_class(make_folder, tmp_path, capsys):
    data = make_folder(classes=3, per_class=6, size=12)
    run = tmp_path / "run"
    assert main(["collect", FACTORY, str(data), "-o", str(run), "--top-k", "3", "--no-progress"]) == 0
    counts = {}
    for n in (1, 3):
        assert main(["fit", str(run), "--features-per-class", str(n), "--no-progress"]) == 0
        assert f"chosen for about {n} features per class" in capsys.readouterr().out
        fit = load_relevance(run)
        assert fit.features_per_class == n
        counts[n] = sum(fit.relevant_counts()) / 3
        assert abs(counts[n] - n) <= 1, fit.relevant_counts()
        # the recorded mu reproduces the fit
        assert main(["fit", str(run), "--mu", repr(fit.mu), "--no-progress"]) == 0
        assert load_relevance(run).relevant_counts() == fit.relevant_counts()
    assert counts[1] < counts[3]


def test_grayscale_palette_rgba_images_and_one_channel_model(make_folder, tmp_path):
    data = make_folder(classes=2, per_class=2, size=10, mode="L")
    Image.fromarray(np.zeros((10, 10, 4), np.uint8), "RGBA").save(data / "class0" / "rgba.png")
    Image.fromarray(np.zeros((10, 10), np.uint8)).convert("P").save(data / "class1" / "pal.png")
    assert main(["collect", FACTORY, str(data), "-o", str(tmp_path / "r3"), "--top-k", "2"]) == 0
    assert main(["collect", FACTORY, str(data), "-o", str(tmp_path / "r1"), "--top-k", "2",
                 "--model-arg", "in_channels=1"]) == 0


@pytest.mark.parametrize("case", ["missing", "empty", "corrupt", "layer", "mu", "solver", "weights", "empty_class",
                                  "model"])
def test_bad_input_gives_one_clear_line(case, make_folder, tmp_path, capsys):
    data = make_folder(classes=2, per_class=2, size=10)
    run = tmp_path / "run"
    args = ["collect", FACTORY, str(data), "-o", str(run), "--top-k", "2"]
    expect = ""
    if case == "missing":
        args[2], expect = str(tmp_path / "nope"), "not found"
    elif case == "empty":
        (tmp_path / "empty").mkdir()
        args[2], expect = str(tmp_path / "empty"), "class folder"
    elif case == "corrupt":
        (data / "class1" / "bad.png").write_bytes(b"not an image")
        expect = "bad.png"
    elif case == "layer":
        args += ["--layer", "4x"]
        expect = "no layer named '4x'"
    elif case == "mu":
        assert main(args) == 0
        capsys.readouterr()
        args, expect = ["fit", str(run), "--mu", "0"], "mu must be a positive"
    elif case == "solver":
        assert main(args) == 0
        capsys.readouterr()
        args, expect = ["fit", str(run), "--solver", "lars"], "solver must be one of auto, torch, spams"
    elif case == "weights":
        torch.save(tiny_cnn(num_classes=7).state_dict(), tmp_path / "w.pt")
        args += ["--weights", str(tmp_path / "w.pt")]
        expect = "does not fit"
    elif case == "empty_class":
        (data / "class2").mkdir()
        expect = "class2"
    elif case == "model":
        args[1], expect = "torchvision:nonexistent_net", "no model"
    assert main(args) == 2
    err = _err(capsys)
    assert err.startswith("vebi: error:") and expect in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_console_script_exit_code_and_no_traceback(tmp_path):
    exe = Path(sys.executable).with_name("vebi")
    proc = subprocess.run([str(exe), "fit", str(tmp_path / "absent")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "not found" in proc.stderr


def test_corrupt_image_read_by_a_worker_process(make_folder, tmp_path, capsys):
    data = make_folder(classes=2, per_class=2, size=10)
    (data / "class0" / "zz_bad.png").write_bytes(b"\x89PNG broken")
    code = main(["collect", FACTORY, str(data), "-o", str(tmp_path / "run"), "--workers", "1"])
    err = _err(capsys)
    assert code == 2 and "zz_bad.png" in err and len(err.strip().splitlines()) == 1, err
