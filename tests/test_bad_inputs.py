"""Every bad input the CLI can be given: exit code 2, exactly one ``vebi: error:`` line naming the
problem, no traceback, and the run folder exactly as it was (names, mtimes and contents).

Also: a tampered run.json cannot run code, artifacts that do not belong together are refused, the
report reads nothing outside the run, and images are read as they are meant (16-bit, EXIF, GIF,
hidden folders, symbolic-link loops).
"""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_cnn
from PIL import Image
from torch import nn

from vebi.cli import main

FACTORY = "conftest:tiny_cnn"  # importable because pytest puts tests/ on sys.path
HERE = "test_bad_inputs"


# ----------------------------------------------------------------------------- models with faults


class _Wrapped(nn.Module):
    def __init__(self, fault: str) -> None:
        super().__init__()
        self.net, self.fault = tiny_cnn(num_classes=2), fault

    def forward(self, x: torch.Tensor):
        out = self.net(x)
        if self.fault == "maps":
            return out[:, :, None, None].expand(-1, -1, 2, 2)
        if self.fault == "tuple":
            return out, out
        if self.fault == "flat":
            return out.flatten()
        if self.fault == "raise":
            raise RuntimeError("boom inside the user's forward")
        return out


def faulty(fault: str = "maps") -> nn.Module:
    return _Wrapped(fault)


def nan_weights() -> nn.Module:
    net = tiny_cnn(num_classes=2)
    with torch.no_grad():
        net[3].weight[0, 0, 0, 0] = float("nan")
    return net


def nan_responses() -> nn.Module:
    """Finite weights, but the first ReLU's maps pass through a square root of negative values."""
    net = tiny_cnn(num_classes=3)

    class Sqrt(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sqrt(x - 10.0)

    net[1] = Sqrt()
    return net


# ----------------------------------------------------------------------------- helpers


def _images(root: Path, classes: tuple[str, ...] = ("class0", "class1", "class2"), per_class: int = 2, size: int = 16) -> Path:
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / c / f"img{i}.png")
    return root


def _snapshot(folder: Path) -> dict[str, tuple[int, str]]:
    """Every file under ``folder``: (mtime in ns, SHA-256)."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> tuple[Path, Path]:
    """A run folder with statistics, a fit, interpretations and one explanation; its image folder."""
    base = tmp_path_factory.mktemp("fitted")
    data = _images(base / "data")
    run = base / "run"
    for args in (["collect", FACTORY, str(data), "-o", str(run), "--top-k", "2"], ["fit", str(run), "--mu", "2"],
                 ["interpret", "--trust-model", str(run), str(data), "--top-k", "2", "--tile-size", "8", "--no-progress"],
                 ["explain", "--trust-model", str(run), str(data / "class0" / "img0.png"), "--device", "cpu"]):
        assert main(args) == 0, args
    return run, data


class Case:
    """One bad input: ``setup(run, data, tmp)`` changes the copies as the case needs and returns the
    arguments and the folder that must stay as it was (default: the run)."""

    def __init__(self, expect: str, setup: Callable[..., list[str] | tuple[list[str], Path]],
                 patch: Callable[[pytest.MonkeyPatch], None] | None = None) -> None:
        self.expect, self.setup, self.patch = expect, setup, patch


def _collect(run, data, tmp, *extra, model=FACTORY, folder=None):
    out = tmp / "new"
    return ["collect", model, str(folder or data), "-o", str(out), "--top-k", "2", *extra], out


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _bad_image(data: Path, name: str = "bad.png") -> None:
    (data / "class1" / name).write_bytes(b"not an image")


def _full_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every atomic write fails as on a full disk (at the rename that would publish it)."""
    from vebi.io import atomic

    def no_space(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "replace", no_space)


def _bomb(monkeypatch: pytest.MonkeyPatch) -> None:
    """PIL's decompression-bomb guard fires for any image above 200 pixels (16 x 16 = 256)."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)


def _no_convergence(monkeypatch: pytest.MonkeyPatch) -> None:
    from vebi.core import lasso

    monkeypatch.setattr(lasso, "solve_mu_lasso", functools.partial(lasso.solve_mu_lasso, max_iter=1))


def _edit_json(path: Path, change: Callable[[dict], object]) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _tamper_spec(run: Path, tmp: Path) -> Path:
    marker = tmp / "pwned"
    _edit_json(run / "run.json", lambda d: d["model"].update(spec="os:system", args={"command": f"touch {marker}"}))
    return marker


def _other_weights(run, data, tmp):
    w = tmp / "w.pt"
    torch.save(tiny_cnn().state_dict(), w)
    _edit_json(run / "run.json", lambda d: d["model"].update(weights=str(w)))
    torch.save(tiny_cnn(seed=1).state_dict(), w)  # same architecture, other weights
    return ["explain", "--trust-model", str(run), str(data / "class0" / "img0.png")]


def _refit_elsewhere(run, data, tmp):
    """The statistics of another collection beside the old fit (as if the fit had not been cleared)."""
    other = tmp / "other"
    assert main(["collect", FACTORY, str(data), "-o", str(other), "--top-k", "3"]) == 0
    for name in ("stats.json", "stats.safetensors"):
        shutil.copy2(other / name, run / name)
    return ["explain", "--trust-model", str(run), str(data / "class0" / "img0.png")]


def _swap_tensors(run, data, tmp):
    """A fit with another mu whose JSON was not renamed yet: the tensors of one, the JSON of the other."""
    other = tmp / "other"
    shutil.copytree(run, other)
    assert main(["fit", str(other), "--mu", "0.5"]) == 0
    shutil.copy2(other / "relevance.safetensors", run / "relevance.safetensors")
    return ["explain", "--trust-model", str(run), str(data / "class0" / "img0.png")]


def _explain(run, data, tmp, *extra, image=None):
    return ["explain", "--trust-model", str(run), str(image or data / "class0" / "img0.png"), *extra]


def _non_utf8_class(run, data, tmp):
    odd = tmp / "odd"
    _images(odd, classes=("ok", os.fsdecode(b"caf\xe9")))
    shutil.rmtree(run)
    assert main(["collect", FACTORY, str(odd), "-o", str(run), "--top-k", "2"]) == 0
    return ["report", str(run), "--no-progress"]


def _non_utf8_file(run, data, tmp):
    odd = data / "class0" / os.fsdecode(b"\xff.png")
    shutil.copy2(data / "class0" / "img0.png", odd)
    assert main(_explain(run, data, tmp, image=odd)) == 0
    return ["report", str(run), "--no-progress"]


def _float_tiff(run, data, tmp):
    Image.fromarray(np.full((16, 16), 3.5, np.float32), "F").save(data / "class1" / "hot.tif")
    return _collect(run, data, tmp, "--size", "16")


def _corrupt_first(run, data, tmp):
    _bad_image(data, "aaa.png")
    (data / "class0" / "img0.png").rename(data / "class1" / "zz.png")  # class1/aaa.png is not the first ...
    (data / "class1" / "aaa.png").rename(data / "class0" / "000.png")  # ... class0/000.png is
    return _collect(run, data, tmp)


CASES: dict[str, Case] = {
    # collect: data, options, model
    "collect-missing-data": Case("not found", lambda r, d, t: _collect(r, d, t, folder=t / "nope")),
    "collect-empty-data": Case("class folder", lambda r, d, t: (t / "empty").mkdir() or _collect(r, d, t, folder=t / "empty")),
    "collect-only-hidden-folder": Case("class folder", lambda r, d, t: (t / "h" / ".ipynb_checkpoints").mkdir(parents=True)
                                       or _collect(r, d, t, folder=t / "h")),
    "collect-corrupt-image": Case("bad.png", lambda r, d, t: _bad_image(d) or _collect(r, d, t, "--size", "16")),
    "collect-corrupt-first-image-no-size": Case("000.png", _corrupt_first),
    "collect-empty-class": Case("class3", lambda r, d, t: (d / "class3").mkdir() or _collect(r, d, t)),
    "collect-unknown-layer": Case("no layer named '4x'", lambda r, d, t: _collect(r, d, t, "--layer", "4x")),
    "collect-unknown-torchvision-model": Case("no model", lambda r, d, t: _collect(r, d, t, model="torchvision:nonet")),
    "collect-weights-do-not-fit": Case("does not fit", lambda r, d, t: torch.save(tiny_cnn(7).state_dict(), t / "w.pt")
                                       or _collect(r, d, t, "--weights", str(t / "w.pt"))),
    "collect-zero-byte-weights": Case("cannot read weights file", lambda r, d, t: (t / "w.pt").write_bytes(b"")
                                      or _collect(r, d, t, "--weights", str(t / "w.pt"))),
    "collect-size-0": Case("size must be at least 1", lambda r, d, t: _collect(r, d, t, "--size", "0")),
    "collect-size-negative": Case("size must be at least 1", lambda r, d, t: _collect(r, d, t, "--size", "-5")),
    "collect-workers-negative": Case("workers must be at least 0", lambda r, d, t: _collect(r, d, t, "--workers", "-1")),
    "collect-out-is-a-file": Case("is not a folder", lambda r, d, t: (_collect(r, d, t)[0][:4]
                                  + [str(_write(t / "file.txt", "mine")), "--top-k", "2"], t)),
    "collect-output-4d": Case("shape (2, 2, 2, 2)", lambda r, d, t: _collect(r, d, t, "-b", "2", model=f"{HERE}:faulty")),
    "collect-output-tuple": Case("returned tuple", lambda r, d, t: _collect(
        r, d, t, "--model-arg", "fault=tuple", model=f"{HERE}:faulty")),
    "collect-output-1d": Case("has shape (", lambda r, d, t: _collect(r, d, t, "--model-arg", "fault=flat",
                                                                        model=f"{HERE}:faulty")),
    "collect-forward-raises": Case("RuntimeError: boom inside the user's forward", lambda r, d, t: _collect(
        r, d, t, "--model-arg", "fault=raise", model=f"{HERE}:faulty")),
    "collect-nan-weights": Case("NaN or infinite values in 3.weight", lambda r, d, t: _collect(
        r, d, t, model=f"{HERE}:nan_weights")),
    "collect-nan-responses": Case("NaN or infinite responses", lambda r, d, t: _collect(
        r, d, t, model=f"{HERE}:nan_responses")),
    "collect-float-tiff": Case("outside [0, 1]", _float_tiff),
    "collect-decompression-bomb": Case("decompression bomb", lambda r, d, t: _collect(r, d, t), _bomb),
    "collect-full-disk": Case("No space left on device", lambda r, d, t: _collect(r, d, t), _full_disk),
    "collect-into-a-run-full-disk": Case("No space left on device", lambda r, d, t: ["collect", FACTORY, str(d), "-o",
                                         str(r), "--top-k", "3"], _full_disk),
    # fit
    "fit-mu-0": Case("mu must be a positive", lambda r, d, t: ["fit", str(r), "--mu", "0"]),
    "fit-mu-inf": Case("mu must be a positive", lambda r, d, t: ["fit", str(r), "--mu", "inf"]),
    "fit-no-convergence": Case("choose a smaller mu", lambda r, d, t: ["fit", str(r), "--mu", "1e308", "--solver",
                                                                      "torch", "--no-progress"], _no_convergence),
    "fit-unknown-solver": Case("solver must be one of", lambda r, d, t: ["fit", str(r), "--solver", "lars"]),
    "fit-over-memory-budget": Case("more than 1.0 KiB (the given budget); restrict the layers",
                                   lambda r, d, t: ["fit", str(r), "--memory-budget", "1KiB"]),
    "fit-features-per-class-0": Case("features per class must be a whole number >= 1",
                                     lambda r, d, t: ["fit", str(r), "--features-per-class", "0"]),
    "fit-missing-run": Case("not found", lambda r, d, t: ["fit", str(t / "absent")]),
    "fit-full-disk": Case("No space left on device", lambda r, d, t: ["fit", str(r), "--mu", "3", "--no-progress"],
                          _full_disk),
    "fit-stats-json-list": Case("not a JSON object", lambda r, d, t: _write(r / "stats.json", "[1, 2]") and
                                ["fit", str(r)]),
    "fit-stats-json-null": Case("not a JSON object", lambda r, d, t: _write(r / "stats.json", "null") and
                                ["fit", str(r)]),
    "fit-stats-json-missing-key": Case("'space'", lambda r, d, t: _edit_json(r / "stats.json", lambda s: s.pop("space"))
                                       or ["fit", str(r)]),
    "fit-stats-json-wrong-type": Case("stats.json", lambda r, d, t: _edit_json(
        r / "stats.json", lambda s: s.update(space={"layers": 5, "channels": "x"})) or ["fit", str(r)]),
    "fit-stats-tensors-of-another-collection": Case("is not the file stats.json was written with", lambda r, d, t: (
        (r / "stats.safetensors").write_bytes((r / "stats.safetensors").read_bytes()[:-8] + b"\0" * 8),
        ["fit", str(r)])[1]),
    # interpret
    "interpret-full-disk": Case("No space left on device", lambda r, d, t: [
        "interpret", "--trust-model", str(r), str(d), "--top-k", "2", "--tile-size", "8", "--no-progress"], _full_disk),
    "interpret-unknown-class": Case("cow", lambda r, d, t: ["interpret", "--trust-model", str(r), str(d), "--class",
                                                            "cow", "--no-progress"]),
    "interpret-untrusted-spec": Case("pass --trust-model", lambda r, d, t: ["interpret", str(r), str(d)]),
    # explain
    "explain-untrusted-spec": Case("run.json names the model 'conftest:tiny_cnn'", lambda r, d, t: _explain(r, d, t)[:1]
                                   + _explain(r, d, t)[2:]),
    "explain-unknown-method": Case("unknown explanation method 'nope'", lambda r, d, t: _explain(r, d, t, "-m", "nope")),
    "explain-unreadable-image": Case("cannot read image", lambda r, d, t: _bad_image(d) or _explain(
        r, d, t, image=d / "class1" / "bad.png")),
    "explain-unknown-target": Case("unknown class 'cow'", lambda r, d, t: _explain(r, d, t, "--target", "cow")),
    "explain-missing-run": Case("not found", lambda r, d, t: _explain(t / "missing", d, t)),
    "explain-out-is-a-file": Case("is not a folder", lambda r, d, t: _explain(r, d, t, "-o", str(_write(t / "f", "x")))),
    "explain-decompression-bomb": Case("decompression bomb", lambda r, d, t: _explain(r, d, t), _bomb),
    "explain-full-disk": Case("No space left on device", lambda r, d, t: _explain(r, d, t), _full_disk),
    "explain-run-json-list": Case("not a JSON object", lambda r, d, t: _write(r / "run.json", "[]") and
                                  _explain(r, d, t)),
    "explain-run-json-missing-model": Case("'model' entry", lambda r, d, t: _edit_json(
        r / "run.json", lambda j: j.pop("model")) or _explain(r, d, t)),
    "explain-run-json-wrong-type": Case("'model' entry", lambda r, d, t: _edit_json(
        r / "run.json", lambda j: j["model"].update(spec=5)) or _explain(r, d, t)),
    "explain-relevance-json-null": Case("not a JSON object", lambda r, d, t: _write(r / "relevance.json", "null") and
                                        _explain(r, d, t)),
    "explain-relevance-json-missing-mu": Case("'mu'", lambda r, d, t: _edit_json(
        r / "relevance.json", lambda j: j.pop("mu")) or _explain(r, d, t)),
    "explain-relevance-json-wrong-type": Case("wrong type", lambda r, d, t: _edit_json(
        r / "relevance.json", lambda j: j.update(mu=[1])) or _explain(r, d, t)),
    "explain-relevance-pair-broken": Case("is not the file relevance.json was written with", _swap_tensors),
    "explain-relevance-of-other-statistics": Case("made from other statistics", _refit_elsewhere),
    "explain-other-weights": Case("is not the one the statistics were collected with", _other_weights),
    # report
    "report-missing-run": Case("not found", lambda r, d, t: ["report", str(t / "nowhere")]),
    "report-out-is-run-json": Case("is not a page written by `vebi report`", lambda r, d, t: [
        "report", str(r), "-o", str(r / "run.json"), "--no-progress"]),
    "report-full-disk": Case("No space left on device", lambda r, d, t: ["report", str(r), "--no-progress"], _full_disk),
    "report-image-outside-the-run": Case("outside", lambda r, d, t: _edit_json(
        r / "explanations" / "img0.json", lambda j: j.update(image="/etc/hostname")) or ["report", str(r)]),
    "report-image-escaping-by-dots": Case("outside", lambda r, d, t: _edit_json(
        r / "explanations" / "img0.json", lambda j: j.update(image="../../data/class0/img0.png")) or ["report", str(r)]),
    "report-interpretation-json-list": Case("not a JSON object", lambda r, d, t: _write(
        r / "interpretation" / "interpretation.json", "[]") and ["report", str(r)]),
    "report-interpretation-of-another-fit": Case("vebi interpret", lambda r, d, t: _edit_json(
        r / "interpretation" / "interpretation.json", lambda j: j.update(relevance_sha256="0" * 64))
        or ["report", str(r)]),
    "report-explanation-of-another-fit": Case("vebi explain", lambda r, d, t: _edit_json(
        r / "explanations" / "img0.json", lambda j: j.update(relevance_sha256="0" * 64)) or ["report", str(r)]),
    "report-explanation-wrong-types": Case("img0.json", lambda r, d, t: _edit_json(
        r / "explanations" / "img0.json", lambda j: j.update(features=5)) or ["report", str(r)]),
    "report-non-utf8-class-name": Case("not valid UTF-8", _non_utf8_class),
    "report-non-utf8-file-name": Case("not valid UTF-8", _non_utf8_file),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_one_line_exit_2_nothing_changed(name, fitted, tmp_path, capsys, monkeypatch):
    case = CASES[name]
    run, data = tmp_path / "run", tmp_path / "data"
    shutil.copytree(fitted[0], run)
    shutil.copytree(fitted[1], data)
    marker = _tamper_spec(run, tmp_path) if name.endswith("untrusted-spec") and "conftest" not in case.expect else None
    got = case.setup(run, data, tmp_path)
    args, watched = got if isinstance(got, tuple) else (got, run)
    capsys.readouterr()
    before = _snapshot(watched)
    if case.patch is not None:
        case.patch(monkeypatch)
    code = main(args)
    monkeypatch.undo()
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("vebi: warning:")
             and "batch/s]" not in ln and "class/s]" not in ln]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("vebi: error:"), err
    assert case.expect in lines[0] and "Traceback" not in err, err
    assert _snapshot(watched) == before
    if marker is not None:
        assert not marker.exists()


def test_tampered_run_json_runs_no_code_even_with_an_argument(fitted, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(fitted[0], run)
    marker = _tamper_spec(run, tmp_path)
    for command in (["explain", str(run), str(fitted[1] / "class0" / "img0.png")],
                    ["interpret", str(run), str(fitted[1])], ["evaluate", str(run), str(fitted[1])]):
        assert main(command) == 2
        assert "'os:system'" in capsys.readouterr().err
    assert not marker.exists()
    from vebi.run import Run

    with pytest.raises(Exception, match="--trust-model"):
        Run.open(run).model()
    assert not marker.exists()


def test_collecting_again_clears_what_the_old_statistics_made(fitted, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(fitted[0], run)
    assert (run / "relevance.json").is_file() and (run / "interpretation").is_dir()
    assert main(["collect", FACTORY, str(fitted[1]), "-o", str(run), "--top-k", "2", "--layer", "0"]) == 0
    err = capsys.readouterr().err
    assert "removed what was made from the old one (relevance.json, relevance.safetensors, interpretation, " \
           "explanations)" in err
    assert not (run / "relevance.json").exists() and not (run / "explanations").exists()
    assert main(["fit", str(run), "--mu", "2"]) == 0
    assert json.loads((run / "relevance.json").read_text())["space"]["layers"] == ["0"]


def test_images_read_as_meant(tmp_path, capsys):
    from vebi.data import image_folder, load_image

    grey16 = tmp_path / "g16.png"
    Image.fromarray(np.full((4, 4), 32768, np.uint16)).save(grey16)
    assert np.asarray(load_image(grey16))[0, 0].tolist() == [128, 128, 128]  # 32768 / 65535 * 255, not white

    turned = tmp_path / "exif.jpg"
    picture = Image.new("RGB", (8, 4), "white")
    picture.paste((255, 0, 0), (0, 0, 2, 4))  # red on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90 degrees clockwise
    picture.save(turned, exif=exif, quality=100)
    upright = load_image(turned)
    assert upright.size == (4, 8) and np.asarray(upright)[0, 1, 0] > 200 > np.asarray(upright)[0, 1, 1]

    data = _images(tmp_path / "data", per_class=2)
    Image.new("RGB", (16, 16), "blue").save(data / "class0" / "anim.gif")
    (data / ".ipynb_checkpoints").mkdir()
    (data / "class1" / "notes.txt").write_text("x")
    (data / "class1" / "loop").symlink_to(data / "class1", target_is_directory=True)
    with pytest.warns(Warning, match="skipped 2 entries") as caught:
        dataset = image_folder(data)
    assert dataset.classes == ["class0", "class1", "class2"] and len(dataset) == 7  # 6 PNGs and the GIF's first frame
    assert "1 folders reached twice" in str(caught[0].message) and "1 not images" in str(caught[0].message)
    assert np.asarray(load_image(data / "class0" / "anim.gif"))[0, 0].tolist() == [0, 0, 255]


def test_report_leaves_out_a_decompression_bomb_with_a_warning(fitted, tmp_path, capsys, monkeypatch):
    """The report's rule for any unreadable picture: left out, one warning line each, the page written."""
    run = tmp_path / "run"
    shutil.copytree(fitted[0], run)
    _bomb(monkeypatch)
    assert main(["report", str(run), "--no-progress"]) == 0
    warnings = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("vebi: warning:")]
    assert warnings and all("decompression bomb" in ln and "left out" in ln for ln in warnings)
    assert (run / "report" / "index.html").is_file()
