"""an8Flower generator: determinism, resume, exact visible-part masks, layout, variants, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torchvision.datasets import ImageFolder

from vebi.an8flower import (
    DOUBLE_12C,
    PART_LABELS,
    PARTS,
    SINGLE_6C,
    DatasetConfig,
    contact_sheet,
    generate,
    load_mask,
    load_part_masks,
    load_variant,
    mask_path,
    read_manifest,
    sample_params,
)
from vebi.an8flower.contact import GAP, LABEL_WIDTH, mask_overlay
from vebi.an8flower import render as render_module
from vebi.an8flower.render import facing, probe, render, render_labels
from vebi.an8flower.scene import build_scene, render_threads, scalar_variant
from vebi.an8flower.variants import variant_from_dict
from vebi.cli import main
from vebi.errors import VebiError

TINY = DatasetConfig(SINGLE_6C, per_class=2, size=24, seed=3, spp=4)


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("an8") / "ds"
    generate(root, TINY, workers=2, progress=False)
    return root


def test_layout_manifest_and_imagefolder(tiny_dataset):
    data = read_manifest(tiny_dataset)
    assert data["classes"] == ["00-red", "01-yellow", "02-green", "03-cyan", "04-blue", "05-magenta"]
    assert data["designated"] == ["centre"]
    assert len(data["images"]) == 12
    # index i -> class i mod 6; per class 2 images with round(2 * 0.2) = 0 -> at least 1 test image
    for rec in data["images"]:
        assert rec["class"] == data["classes"][rec["index"] % 6]
        assert rec["split"] == ("train" if rec["index"] < 6 else "test")
        assert rec["image"] == f"images/{rec['split']}/{rec['class']}/{rec['index']:06d}.png"
        assert rec["params"]["label"] == rec["index"] % 6
    train = ImageFolder(str(tiny_dataset / "images" / "train"))
    assert train.classes == data["classes"] and len(train) == 6
    rec = data["images"][7]
    image = np.asarray(Image.open(tiny_dataset / rec["image"]))
    assert image.shape == (24, 24, 3) and image.dtype == np.uint8
    mask = load_mask(tiny_dataset / rec["mask"])
    parts = load_part_masks(tiny_dataset / rec["parts"])
    assert mask_path(tiny_dataset / rec["image"]) == tiny_dataset / rec["mask"]
    assert mask_path(tiny_dataset / rec["image"], "parts") == tiny_dataset / rec["parts"]
    np.testing.assert_array_equal(mask, parts["centre"])
    assert mask.any()
    # the label map partitions the image: each pixel is background or exactly one part
    stacked = np.stack([parts[p] for p in PARTS]).sum(0)
    assert stacked.max() == 1 and (stacked == 0).any()


def test_same_seed_same_bytes_in_one_process_and_after_resume(tiny_dataset, tmp_path):
    reference = files(tiny_dataset)
    other = tmp_path / "one"
    result = generate(other, TINY, workers=1, progress=False)
    assert (result.rendered, result.skipped) == (12, 0)
    assert files(other) == reference  # 2 processes and 1 process give the same bytes

    # interrupt: files gone, a half-written temporary left behind; the rerun renders only those
    (other / "images/train/01-yellow/000001.png").unlink()
    (other / "masks/test/05-magenta/000011.png").unlink()
    (other / "images/test/00-red/.000006.png.abc.tmp.png").write_bytes(b"partial")
    result = generate(other, TINY, workers=1, progress=False)
    assert (result.rendered, result.skipped) == (2, 10)
    assert files(other) == reference

    assert generate(other, TINY, workers=1, progress=False).rendered == 0


def test_one_worker_renders_on_one_thread_and_restores_the_count(tmp_path, monkeypatch):
    import drjit as dr

    from vebi.an8flower import dataset

    seen = []
    real = dataset.render_record
    monkeypatch.setattr(dataset, "render_record", lambda *a: seen.append(dr.thread_count()) or real(*a))
    original = dr.thread_count()
    dr.set_thread_count(2)
    try:
        generate(tmp_path / "one", DatasetConfig(SINGLE_6C, per_class=2, size=16, seed=3, spp=1), workers=1,
                 progress=False)
        assert seen == [1] * 12 and dr.thread_count() == 2
        with pytest.raises(RuntimeError, match="inside"), render_threads(1):
            raise RuntimeError("inside")
        assert dr.thread_count() == 2
    finally:
        dr.set_thread_count(original)


def test_other_seed_differs_and_config_clash_is_refused(tiny_dataset, tmp_path):
    with pytest.raises(VebiError, match="different configuration"):
        generate(tiny_dataset, DatasetConfig(SINGLE_6C, per_class=2, size=24, seed=4, spp=4), progress=False)
    a = sample_params(SINGLE_6C, 0, np.random.default_rng([3, 0]))
    b = sample_params(SINGLE_6C, 0, np.random.default_rng([4, 0]))
    assert a != b
    (tmp_path / "junk.txt").write_text("x")
    with pytest.raises(VebiError, match="not empty"):
        generate(tmp_path, TINY, progress=False)


@pytest.mark.parametrize("variant,index", [(SINGLE_6C, 0), (DOUBLE_12C, 5), (DOUBLE_12C, 17)])
def test_masks_are_exactly_the_visible_pixels_of_each_part(variant, index):
    """Hide one part and re-render: the first-hit distance/albedo changes exactly inside its mask."""
    params = sample_params(variant, index % len(variant.classes), np.random.default_rng([11, index]))
    size = 40
    labels = render_labels(params, size)
    full = probe(params, size)
    for part in PARTS:
        changed = np.any(probe(params, size, hide=(part,)) != full, axis=-1)
        expected = labels == PART_LABELS[part]
        assert expected.sum() > 0, part
        np.testing.assert_array_equal(changed, expected, err_msg=part)
    # the production render's label map is the same pass
    np.testing.assert_array_equal(render(params, size, spp=4).labels, labels)


def _aov_pass(params, size):
    with scalar_variant() as mi:
        return render_module._aov_labels(mi, build_scene(params, size, 1), params, size)


def _count_fallbacks(monkeypatch) -> list[int]:
    calls: list[int] = []
    aov = render_module._aov_labels

    def counted(*args):
        calls.append(1)
        return aov(*args)

    monkeypatch.setattr(render_module, "_aov_labels", counted)
    return calls


@pytest.mark.parametrize("variant,index", [(SINGLE_6C, 0), (DOUBLE_12C, 5), (DOUBLE_12C, 17)])
def test_emitted_labels_equal_mitsubas_shape_index_pass_without_falling_back(variant, index, monkeypatch):
    params = sample_params(variant, index % len(variant.classes), np.random.default_rng([11, index]))
    expected = _aov_pass(params, 40)
    calls = _count_fallbacks(monkeypatch)
    np.testing.assert_array_equal(render_labels(params, 40), expected)
    np.testing.assert_array_equal(render(params, 40, spp=4).labels, expected)
    assert calls == []


def test_a_hit_that_emits_no_label_falls_back_to_the_shape_index_pass(monkeypatch):
    """Without turning the triangles to the camera, back faces are seen and emit nothing."""
    params = sample_params(SINGLE_6C, 0, np.random.default_rng([11, 0]))
    expected = _aov_pass(params, 40)
    calls = _count_fallbacks(monkeypatch)
    monkeypatch.setattr(render_module, "facing", lambda verts, faces, eye: faces.reshape(-1, 3))
    np.testing.assert_array_equal(render_labels(params, 40), expected)
    assert calls == [1]


def test_facing_reverses_exactly_the_triangles_that_look_away():
    verts = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float32)
    faces = np.array([[0, 1, 2], [0, 2, 1], [0, 1, 3], [0, 3, 1]], dtype=np.uint32)  # normals +z, -z, -y, +y
    out = facing(verts, faces, np.array([0.2, 0.3, 5.0]))  # eye above the z = 0 plane, on the +y side
    np.testing.assert_array_equal(out, [[0, 1, 2], [0, 1, 2], [0, 3, 1], [0, 3, 1]])
    np.testing.assert_array_equal(faces[1], [0, 2, 1])  # the input is left as it was


def test_occluded_part_pixels_are_not_in_the_mask():
    """Hiding the petals uncovers centre or stem pixels that the full mask must not contain."""
    params = sample_params(DOUBLE_12C, 0, np.random.default_rng([11, 5]))
    full = render_labels(params, 40)
    without_petals = render_labels(params, 40, hide=("petals",))
    uncovered = (full == PART_LABELS["petals"]) & (without_petals != 0)
    assert uncovered.any()
    assert not np.any(np.isin(full[uncovered], [PART_LABELS["centre"], PART_LABELS["stem"], PART_LABELS["leaves"]]))


def test_class_changes_only_designated_colours():
    for variant in (SINGLE_6C, DOUBLE_12C):
        params = [sample_params(variant, c, np.random.default_rng([5, 9])) for c in range(len(variant.classes))]
        base = params[0].to_dict()
        for p in params[1:]:
            d = p.to_dict()
            for key in base:
                if key not in ("label", "colours"):
                    assert d[key] == base[key], key
            for part in PARTS:
                same = d["colours"][part] == base["colours"][part]
                assert same == (part not in variant.designated or p.colour(part) == params[0].colour(part))


def test_double_12c_needs_both_parts():
    assert len(DOUBLE_12C.classes) == 12 and DOUBLE_12C.designated == ("centre", "leaves")
    for part in DOUBLE_12C.designated:
        colours = [c.colour(part) for c in DOUBLE_12C.classes]
        assert all(colours.count(c) >= 2 for c in colours)  # no colour of one part identifies a class
    pairs = {(c.colour("centre"), c.colour("leaves")) for c in DOUBLE_12C.classes}
    assert len(pairs) == 12


def test_user_variant_config(tmp_path):
    path = tmp_path / "petal.json"
    path.write_text(json.dumps({"name": "petal-2c", "designated": ["petals"],
                                "palettes": {"petals": {"red": "#ff0000", "blue": [0.0, 0.0, 1.0]}}}))
    variant = load_variant(str(path))
    assert variant.class_names == ("00-red", "01-blue")
    assert variant.classes[0].colour("petals") == (1.0, 0.0, 0.0)
    params = sample_params(variant, 1, np.random.default_rng(0))
    r, g, b = params.colour("petals")
    assert b > 0.8 and r < 0.1 and g < 0.1  # blue with slight colour noise
    explicit = variant_from_dict({"name": "x", "designated": ["stem", "centre"], "classes": [
        {"name": "a", "colours": {"centre": "#ff0000", "stem": "#00ff00"}},
        {"name": "b", "colours": {"centre": "#00ff00", "stem": "#ff0000"}}]})
    assert explicit.designated == ("centre", "stem")
    for bad, message in [
        ({"name": "x", "designated": ["root"], "palettes": {}}, "unknown"),
        ({"name": "x", "designated": ["centre"], "palettes": {"centre": {"a": "#ff0000"}}}, "at least two"),
        ({"name": "x", "designated": ["centre"], "palettes": {"centre": {"a": "red", "b": "#00ff00"}}}, "colour"),
        ({"name": "x", "designated": ["centre"]}, "exactly one"),
    ]:
        with pytest.raises(VebiError, match=message):
            variant_from_dict(bad)
    with pytest.raises(VebiError, match="unknown variant"):
        load_variant("triple-99c")


def test_contact_sheet(tiny_dataset, tmp_path):
    out = contact_sheet(tiny_dataset, tmp_path / "sheet.png", per_class=1)
    sheet = np.asarray(Image.open(out))
    tile = 24 + GAP
    assert sheet.shape == (6 * tile + GAP, LABEL_WIDTH + 2 * tile, 3)
    data = read_manifest(tiny_dataset)
    rec = next(r for r in data["images"] if r["split"] == "test" and r["class"] == "02-green")
    image = np.asarray(Image.open(tiny_dataset / rec["image"]))
    np.testing.assert_array_equal(sheet[GAP + 2 * tile: GAP + 2 * tile + 24, LABEL_WIDTH: LABEL_WIDTH + 24], image)
    mask = load_mask(tiny_dataset / rec["mask"])
    overlay = mask_overlay(image, mask)
    grey = (image.mean(-1) * 0.3 + 20.0).astype(np.uint8)
    np.testing.assert_array_equal(overlay[~mask], np.repeat(grey[~mask][:, None], 3, axis=1))


def test_cli_generates_and_reports_errors(tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(["an8flower", "--variant", "double-12c", "--per-class", "2", "--size", "16", "--spp", "1",
                 "--workers", "1", "--no-progress", "-o", str(out), "--sheet", str(tmp_path / "s.png")])
    assert code == 0
    assert len(read_manifest(out)["images"]) == 24 and (tmp_path / "s.png").is_file()
    assert "24 images" in capsys.readouterr().out
    assert main(["an8flower", "--variant", "nope", "-o", str(tmp_path / "x")]) == 2
    assert main(["an8flower", "--spp", "5", "-o", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[0].startswith("vebi: error: unknown variant") and "square" in err[1]


def test_rendering_leaves_the_callers_mitsuba_variant_alone():
    import mitsuba as mi

    previous = mi.variant()
    mi.set_variant("scalar_spectral")
    try:
        params = sample_params(SINGLE_6C, 2, np.random.default_rng(0))
        assert render(params, 16, spp=1).image.shape == (16, 16, 3)
        assert mi.variant() == "scalar_spectral"
    finally:
        mi.set_variant(previous or "scalar_rgb")
    with pytest.raises(VebiError, match="not a class"):
        sample_params(SINGLE_6C, 6, np.random.default_rng(0))
