"""The HTML report: what it reads from a run folder, what it writes, what it leaves out, escaping, CLI."""

from __future__ import annotations

import json
import os
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import pytest
import torch

from conftest import tiny_cnn
from report_run import (ABLATION, EXPECTED_COUNTS, EXPECTED_LAYER_RELEVANT, EXPECTED_SIGNS, SUMMARY, WEIGHTS,
                        build_run, expected_images)
from vebi.cli import main
from vebi.data import image_folder
from vebi.errors import VebiError
from vebi.report import build_report, collect_run
from vebi.report.collect_run import MapRef

PAYLOADS = ("<script>alert(1)</script>", "<img src=x onerror=alert(1)>", "<svg onload=alert(1)>")


class _Page(HTMLParser):
    """Tags, attributes and text of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def ids(self) -> set[str]:
        return {a["id"] for _, a in self.tags if a.get("id")}

    def images(self) -> list[str]:
        return [a["src"] for t, a in self.tags if t == "img"]


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> Path:
    return build_run(tmp_path_factory.mktemp("full"))


def test_collect_run_reads_every_stage(full_run):
    data = collect_run(full_run)
    assert data.warnings == ()
    assert data.class_names == ("cat", "dog", "owl")
    assert data.num_features == 10 and data.num_images == 12 and data.mu == 5.0
    assert [(v.name, v.channels, v.relevant) for v in data.layers] == [("1", 4, EXPECTED_LAYER_RELEVANT[0]),
                                                                        ("4", 6, EXPECTED_LAYER_RELEVANT[1])]
    assert tuple(len(c.features) for c in data.classes) == EXPECTED_COUNTS
    assert tuple((c.positive, c.negative) for c in data.classes) == EXPECTED_SIGNS
    assert [c.images for c in data.classes] == [4, 4, 4]
    # class 0: weights 0.5 (feature 1), -0.2 (feature 7 = layer "4" ch 3), 0.1 (feature 8), by |w|
    cat = data.classes[0].features
    assert [(f.index, f.layer, f.channel, f.weight) for f in cat] == [(1, "1", 1, 0.5), (7, "4", 3, -0.2),
                                                                      (8, "4", 4, 0.1)]
    assert all(f.average is not None and f.average.is_file() and len(f.crops) == 1 for f in cat)
    assert cat[0].receptive_field == (3, 3)  # 3x3 conv before the first ReLU
    assert cat[0].count == 4  # top_k = 4 images averaged
    # accuracy on the collected images, recomputed here from the same seeded model
    dataset = image_folder(full_run.parent / "data", with_index=False)
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    labels = torch.tensor([dataset[i][1] for i in range(len(dataset))])
    with torch.no_grad():
        expected = float((tiny_cnn(num_classes=3)(images).argmax(1) == labels).float().mean())
    assert data.accuracy == pytest.approx(expected)

    # the first image of cat and of dog (dataset indices 0 and 4), explained for the predicted class
    with torch.no_grad():
        probs = tiny_cnn(num_classes=3)(images).softmax(1)
    assert len(data.explanations) == 2
    for e, i in zip(data.explanations, (0, 4), strict=True):
        j = int(probs[i].argmax())
        assert (e.name, e.true_class, e.predicted, e.method) == (f"{data.class_names[i // 4]}/img0.png",
                                                                 data.class_names[labels[i]],
                                                                 data.class_names[j], "vebi")
        assert e.score == pytest.approx(float(probs[i, j]), rel=1e-5) and e.target is None
        assert {f.index for f in e.features} <= {f for f, c, w in WEIGHTS if c == j and w > 0}
        assert all(f.heatmap == MapRef(full_run / "explanations" / f"00{i // 4}.safetensors", f"feature{k}")
                   for k, f in enumerate(e.features))
        assert all(f.interpretation is not None and f.interpretation.is_file() for f in e.features)
        assert e.combined == MapRef(full_run / "explanations" / f"00{i // 4}.safetensors", "combined")
        assert [(m, type(p)) for m, p in e.baselines] == [("guided_backprop", type(full_run)), ("grad_cam", MapRef)]

    ev = data.evaluation
    assert ev is not None and ev.accuracy == 0.625
    assert [g.key for g in ev.groups] == ["iou", "scores", "ablation"]
    iou = ev.groups[0].tables[0]
    assert iou.columns == ("Method", "IoU [95 % CI]", "Best threshold", "Best IoU")
    assert [c.text for c in iou.rows[0]] == ["vebi", "0.412 [0.35, 0.47]", "0.3", "0.52"]  # 3 significant digits
    assert iou.rows[0][1].value == pytest.approx(0.41234567)  # what the column sorts by
    # best per column where the name says which way is better (IoU up); thresholds are not judged
    assert [r[0].text for r in iou.rows if r[1].best] == ["vebi_nofix"]
    assert [r[0].text for r in iou.rows if r[3].best] == ["vebi_nofix"] and not any(r[2].best for r in iou.rows)
    scores = ev.groups[1].tables[0]
    assert scores.columns == ("Method", "Deletion AUC", "Insertion AUC")
    assert [r[0].text for r in scores.rows if r[1].best] == ["guided_backprop"]  # deletion: lower is better
    assert [f.path.name for f in ev.groups[0].figures] == ["iou_vs_threshold.png"]
    assert [c.text for c in ev.groups[2].tables[0].rows[0]] == ["1", "0.5", "0.667"]
    assert all(f.caption for g in ev.groups for f in g.figures)
    assert [c.method for c in ev.iou_curves] == [r["method"] for r in SUMMARY]
    assert all(g.verdict for g in ev.groups)


def test_report_links_every_image_once_and_writes_atomically(full_run, tmp_path):
    out = tmp_path / "out" / "rep.html"
    report = build_report(full_run, out, progress=False)
    assert report.path == out.resolve() and report.assets == (tmp_path / "out" / "rep_files").resolve()
    page = _parse(out)
    srcs = page.images()
    assert len(srcs) == expected_images(collect_run(full_run)) > 30
    for src in srcs:
        assert src.startswith("rep_files/") and (out.parent / src).is_file(), src
    assert {"summary", "classes", "explanations", "evaluation", "eval-iou", "eval-scores",
            "eval-ablation"} <= page.ids()
    assert [t for t, a in page.tags if t == "script"] == ["script"]  # the table sorter, inline
    assert not any("src" in a for t, a in page.tags if t == "script")
    assert not any(p.suffix == ".tmp" or p.name.startswith(".rep") for p in out.parent.iterdir())
    umask = os.umask(0o022)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # not the private mode of temporary files
    assert report.assets.stat().st_mode & 0o777 == 0o777 & ~umask
    # a page name that needs quoting in URLs
    odd = build_report(full_run, tmp_path / "odd" / "a b#1.html", progress=False).path
    odd_srcs = _parse(odd).images()
    assert len(odd_srcs) == len(srcs) and all(s.startswith("a%20b%231_files/") for s in odd_srcs)
    assert all((odd.parent / unquote(s)).is_file() for s in odd_srcs)
    # a second report replaces the image folder as a whole
    stray = report.assets / "stray.png"
    stray.write_bytes(b"x")
    build_report(full_run, out, progress=False)
    assert not stray.exists() and (report.assets / ".vebi-report").is_file()


def test_sections_without_inputs_are_left_out(tmp_path):
    run = build_run(tmp_path / "a", interpretation=False, explanations=False, evaluation=False)
    page = _parse(build_report(run, progress=False).path)
    ids = page.ids()
    assert {"summary", "classes"} <= ids and not ids & {"explanations", "evaluation", "notes"}
    assert len(page.images()) == 2  # only the report's own plots
    assert "vebi interpret RUN DATA" in "".join(page.text)

    run = build_run(tmp_path / "b", masks=False, interpretation=False, explanations=False)
    data = collect_run(run)
    assert [g.key for g in data.evaluation.groups] == ["scores", "ablation"]
    ids = _parse(build_report(run, progress=False).path).ids()
    assert {"evaluation", "eval-scores", "eval-ablation"} <= ids and not ids & {"eval-iou", "explanations"}

    run = build_run(tmp_path / "c", relevance=False, evaluation=False)
    page = _parse(build_report(run, progress=False).path)
    assert "summary" in page.ids() and not page.ids() & {"classes", "explanations"}
    assert page.images() == []
    assert "not fitted yet" in "".join(page.text)


def test_missing_image_is_left_out_with_a_warning(tmp_path):
    run = build_run(tmp_path, interpretation=False, evaluation=False)
    (run / "explanations" / "gb" / "000.png").unlink()
    (run / "explanations" / "gb" / "001.png").write_bytes(b"not a png")
    report = build_report(run, progress=False)
    assert len(report.warnings) == 2
    assert "000.png" in report.warnings[0] and "missing" in report.warnings[0]
    assert "001.png" in report.warnings[1] and "not a readable image" in report.warnings[1]
    page = _parse(report.path)
    assert all((report.path.parent / s).is_file() for s in page.images())
    assert "notes" in page.ids()
    data = collect_run(run)
    assert [len(e.baselines) for e in data.explanations] == [1, 2]  # the missing panel is left out
    assert len(page.images()) == expected_images(data) - 1  # the unreadable one shows as "no image"


def test_user_text_is_escaped(tmp_path):
    run = build_run(tmp_path, class_dirs=PAYLOADS[1:] + ("plain",), names=PAYLOADS,
                    explained_name="<img src=x onerror=alert(2)>.png", evaluation=False)
    html = build_report(run, progress=False).path.read_text(encoding="utf-8")
    page = _parse(build_report(run, progress=False).path)
    text = "".join(page.text)
    for payload in PAYLOADS + ("<img src=x onerror=alert(2)>.png",):
        assert payload in text  # shown as text ...
    assert "<script>alert" not in html and html.count("<script") == 1 and "<img src=x" not in html and "<svg" not in html  # ... never as markup
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert sum(t == "script" for t, _ in page.tags) == 1 and not any(t == "svg" for t, _ in page.tags)
    assert not any(name.startswith("on") for _, attrs in page.tags for name in attrs)
    assert all(s.startswith("index_files/") and (run / "report" / s).is_file() for s in page.images())


def test_listed_evaluation_files_take_their_titles_and_sections(tmp_path):
    run = build_run(tmp_path, interpretation=False, explanations=False)
    ev = run / "evaluation"
    (ev / "results.json").write_text(json.dumps({"schema": 1, "tables": [
        {"file": "scores.csv", "title": "Localisation", "caption": "How to read it.", "section": "iou"}],
        "figures": [{"file": "gone.png", "section": "ablation"}, {"file": "deletion_curves.png"}]}))
    data = collect_run(run)
    assert [(g.key, [t.title for t in g.tables], [f.path.name for f in g.figures]) for g in data.evaluation.groups] \
        == [("iou", ["Localisation"], []), ("scores", [], ["deletion_curves.png"])]
    assert data.evaluation.groups[0].tables[0].caption == "How to read it."
    assert data.evaluation.groups[1].figures[0].title == "Deletion curves"
    assert data.evaluation.accuracy is None
    assert len(data.warnings) == 1 and "gone.png" in data.warnings[0]
    # a section this report does not know (e.g. a newer stage's) gets its own group after the known ones
    (ev / "results.json").write_text(json.dumps({"schema": 1, "figures": [
        {"file": "deletion_curves.png", "section": "new_checks"}, {"file": "ablation_curves.png"}]}))
    assert [(g.key, g.title) for g in collect_run(run).evaluation.groups] == [("ablation", "Feature ablation"),
                                                                             ("new_checks", "New checks")]
    (ev / "results.json").write_text(json.dumps({"schema": 1, "figures": [{"file": "x.png", "section": "a b"}]}))
    with pytest.raises(VebiError, match="section 'a b'"):
        collect_run(run)


def test_cli_writes_the_report_and_prints_its_path(full_run, tmp_path, capsys):
    out = tmp_path / "r.html"
    assert main(["report", str(full_run), "-o", str(out), "--no-progress"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out.resolve())
    assert (tmp_path / "r_files" / "plots" / "relevant_counts.png").is_file()

    foreign = tmp_path / "mine_files"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    assert main(["report", str(full_run), "-o", str(tmp_path / "mine.html")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vebi: error:") and "mine_files" in err and len(err.splitlines()) == 1
    assert (foreign / "keep.txt").read_text() == "mine" and not (tmp_path / "mine.html").exists()

    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "not a vebi run folder" in capsys.readouterr().err
    (full_run / "evaluation" / "broken.csv").write_bytes(b"\xff\xfe\x00bad")
    try:
        assert main(["report", str(full_run), "-o", str(tmp_path / "b.html")]) == 2
        assert "broken.csv" in capsys.readouterr().err
    finally:
        (full_run / "evaluation" / "broken.csv").unlink()


def test_tables_read_as_numbers_with_intervals(tmp_path):
    from vebi.report.tables import format_table, header, significant

    assert [significant(x) for x in (0.0005442, 0.41234567, 1234.6, 2.0, 0.0, -0.0123456, 1e-9)] == \
        ["0.000544", "0.412", "1235", "2", "0", "-0.0123", "1e-09"]
    assert [header(k) for k in ("iou_mean_wrong", "mca", "class_name", "deletion_auc")] == \
        ["IoU mean wrong", "mCA", "Class name", "Deletion AUC"]
    keys = ["method", "subset", "images", "random_mca_mean", "random_mca_std", "pointing", "pointing_low",
            "pointing_high"]
    rows = [["a", "correct", "12", "0.51234", "0.0123", "0.9", "0.8", "1.0"],
            ["b", "correct", "12", "0.7", "0.1", "0.95", "0.9", "1"],
            ["a", "wrong", "3", "0.2", "", "0.4", "", ""],
            ["b", "wrong", "3", "0.3", "0.01", "0.1", "0.0", "0.2"]]
    t = format_table("t", "c", tmp_path / "t.csv", keys, rows, max_rows=3)
    assert t.columns == ("Method", "Subset", "Images", "Random mCA \u00b1 std", "Pointing [95 % CI]")
    assert [[c.text for c in r] for r in t.rows] == [["a", "correct", "12", "0.512 \u00b1 0.0123", "0.9 [0.8, 1]"],
                                                     ["b", "correct", "12", "0.7 \u00b1 0.1", "0.95 [0.9, 1]"],
                                                     ["a", "wrong", "3", "0.2", "0.4"]]
    assert t.truncated == 1
    # pointing: higher is better, judged within each subset; a subset with one method marks nothing
    assert [(r[0].text, r[1].text) for r in t.rows if r[4].best] == [("b", "correct")]
    assert not any(c.best for r in t.rows for c in r[:4])


def _numbers(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"-?\d+(?:\.\d+)?(?:e-?\d+)?", text)]


def test_verdicts_state_numbers_that_agree_with_the_results(full_run):
    said = {g.key: g.verdict for g in collect_run(full_run).evaluation.groups}
    vebi, grad_cam = SUMMARY[0], SUMMARY[1]  # grad_cam: the best baseline (vebi_nofix is a vebi variant)
    iou = said["iou"]
    assert "ahead of the best baseline (grad_cam," in iou and "intervals overlap" in iou
    n, v, b, d = _numbers(iou.split("95 %")[0])[:4]
    assert n == 5 and "5 correctly classified images" in iou
    assert v == pytest.approx(vebi["iou_mean"], abs=5e-4) and b == pytest.approx(grad_cam["iou_mean"], abs=5e-4)
    assert d == pytest.approx(v - b, abs=1e-3)
    scores = said["scores"]  # deletion: guided_backprop 0.18 beats vebi 0.21; insertion: vebi 0.55 beats 0.5
    assert "vebi is not ahead: its deletion AUC (lower is better) 0.21 is behind the best baseline " \
           "(guided_backprop, 0.18) by 0.03." in scores
    assert "insertion AUC (higher is better) 0.55 is ahead of the best baseline (grad_cam, 0.5) by 0.05." in scores
    ablation = said["ablation"]
    explained = [row for row in ABLATION if row[5]]
    before, after, rand, o0, o1 = (sum(r[i] for r in explained) / len(explained) for i in range(5))
    a, b, k, drop, drop_random, r, drop_other = _numbers(ablation.split("(2-3 per class)")[1])[:7]
    assert (a, b, k) == (pytest.approx(before, abs=5e-4), pytest.approx(after, abs=5e-4), len(explained))
    assert drop == pytest.approx(100 * (a - b), abs=0.1) and drop_random == pytest.approx(100 * (a - r), abs=0.1)
    assert r == pytest.approx(rand, abs=5e-4) and drop_other == pytest.approx(100 * (o0 - o1), abs=0.1)
    assert "matter more than random" in ablation
    assert "Zeroing all 4 relevant features of every class at once moved the mean class accuracy from 0.75 to " \
           "0.333 (random sets of that size: 0.7)." in ablation


def test_verdicts_say_when_vebi_is_behind_or_ablation_barely_moves():
    from vebi.report.verdict import plural, verdicts

    summary = [{"method": "vebi", "iou_mean": 0.2}, {"method": "grad_cam", "iou_mean": 0.31},
               {"method": "vebi_nofix", "iou_mean": 0.9}, {"method": "random", "iou_mean": 0.1}]
    row = {"baseline_other_accuracy": 0.99, "positive_features": 4, "positive_other_accuracy": 0.99}
    ablation = {"summary": [
        {**row, "class_index": 0, "baseline_class_accuracy": 0.98, "positive_class_accuracy": 0.976,
         "positive_control_class_accuracy": 0.98},
        {**row, "class_index": 1, "baseline_class_accuracy": 1.0, "positive_class_accuracy": 0.996,
         "positive_control_class_accuracy": 1.0},
        {"class_index": "", "class_name": "mean over classes"}]}
    said = verdicts({"summary": summary, "correct": 1, "ablation": ablation})
    assert said["iou"] == ("On the 1 correctly classified image, vebi is not ahead: its mean IoU 0.2 is behind "
                           "the best baseline (grad_cam, 0.31) by 0.11.")
    assert "4 positive relevant features lowered its accuracy from 0.99 to 0.986 on average over 2 classes, a drop " \
           "of 0.4 points, against 0.0 points" in said["ablation"] and "barely moved" in said["ablation"]
    assert "scores" not in said  # no AUCs in these results
    aucs = [{"method": "vebi", "deletion_auc": 0.2}, {"method": "grad_cam", "deletion_auc": 0.3}]
    subset = verdicts({"summary": aucs, "images": 300, "settings": {"faithfulness_images": 60}})["scores"]
    assert subset.startswith("Deletion and insertion were scored on a class-balanced subset of 60 of the 300 images.")
    assert "subset" not in verdicts({"summary": aucs, "images": 60, "settings": {"faithfulness_images": 60}})["scores"]
    assert verdicts({}) == {} and verdicts({"summary": [{"method": "vebi", "iou_mean": 0.2}]}) == {}
    assert (plural(1, "image"), plural(2, "image"), plural(0, "class", "classes")) == ("1 image", "2 images",
                                                                                      "0 classes")


def test_layer_colours_stay_distinct_and_the_iou_plot_is_drawn(full_run, tmp_path):
    from vebi.report.plots import layer_colors

    for n in (1, 3, 10, 11, 35, 120):
        assert len(set(layer_colors(n))) == n
    report = build_report(full_run, tmp_path / "r.html", progress=False)
    page = _parse(report.path)
    srcs = page.images()
    assert "r_files/plots/iou.png" in srcs and not any("iou00" in s for s in srcs)  # the report's plot replaces it
    text = " ".join("".join(page.text).split())
    assert "1 images" not in text and "4 images" in text and "What this shows:" in text
    # every heatmap is an overlay on the input that links to the map alone
    overlays = [a for t, a in page.tags if t == "img" and a.get("class") == "overlay"]
    data = collect_run(full_run)
    assert len(overlays) == sum(1 + len(e.features) + sum(not isinstance(p, Path) for _, p in e.baselines)
                                for e in data.explanations)
    raws = [a["href"] for t, a in page.tags if t == "a" and a.get("class") == "raw"]
    assert len(raws) == len(overlays) and all((report.path.parent / h).is_file() for h in raws)
    # the first overlay is the combined map blended over the input: (1 - a) image + a colour(h), a = .15 + .55 h
    import numpy as np
    from matplotlib import colormaps
    from PIL import Image, ImageOps
    from safetensors.torch import load_file

    e = data.explanations[0]
    heat = load_file(str(e.combined.path))["combined"].clamp(0, 1).numpy()
    with Image.open(e.image) as img:
        base = np.asarray(ImageOps.fit(img.convert("RGB"), heat.shape[::-1]), dtype=np.float64) / 255
    alpha = (0.15 + 0.55 * heat)[..., None]
    expected = 255 * ((1 - alpha) * base + alpha * colormaps["turbo"](heat)[..., :3])
    with Image.open(report.path.parent / overlays[0]["src"]) as shown:
        assert np.abs(np.asarray(shown, dtype=np.float64) - expected).max() <= 0.5 + 1e-6


def test_features_below_the_minimum_share_are_greyed(tmp_path):
    run = build_run(tmp_path, interpretation=False, evaluation=False)
    record = run / "explanations" / "000.json"
    data = json.loads(record.read_text())
    shares = [f["share"] for f in data["features"]]
    cut = max(shares) + 0.01  # every feature of the first image falls below it
    record.write_text(json.dumps({**data, "min_share": cut}))
    page = _parse(build_report(run, progress=False).path)
    rows = [a["class"] for t, a in page.tags if t == "div" and (a.get("class") or "").startswith("feature-row ")
            or a.get("class") == "feature-row"]
    views = collect_run(run).explanations
    assert views[0].min_share == cut and views[1].min_share == 0.05  # the default where the record names none
    second = [f.share for f in views[1].features]
    assert rows == ["feature-row minor"] * len(shares) + ["feature-row minor" if s < 0.05 else "feature-row"
                                                         for s in second]
    assert "feature-row" in rows


def test_summary_says_when_mu_was_chosen_for_a_feature_count(tmp_path):
    import dataclasses

    from vebi.io.artifacts import load_relevance, save_relevance

    run = build_run(tmp_path, interpretation=False, explanations=False, evaluation=False)
    assert "chosen for about" not in "".join(_parse(build_report(run, progress=False).path).text)
    save_relevance(dataclasses.replace(load_relevance(run), features_per_class=2), run)
    assert collect_run(run).features_per_class == 2
    text = " ".join("".join(_parse(build_report(run, progress=False).path).text).split())
    assert "chosen for about 2 relevant features per class" in text
