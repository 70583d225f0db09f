"""Interpretation cost versus reading the images it needs.

Random 112 x 112 PNGs (an8Flower size) are written to a temporary image folder; statistics are
made up for a small CNN (two layers, receptive fields 14 and 32 px): for each of 120 features
(6 classes x 20 relevant features) its top K = 100 images are drawn at random among the N images
with random maximum locations. The table compares

    load:      dataset[i] once for every image some feature needs (PNG decode + to tensor)
    interpret: vebi.interpretation.crops over the same statistics and dataset (crops, resize, averages)

interleaved repeats, median ratios of wall-clock and of process CPU time (target <= 2; the
CPU-time ratio is the steadier one on a shared machine).

    python benchmarks/bench_interpret.py [--images 1200 2400] [--repeats 3] [--size 64]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from vebi.data import image_folder
from vebi.core.features import FeatureSpace
from vebi.interpretation.crops import interpret
from vebi.interpretation.receptive import receptive_fields
from vebi.core.relevance import Relevance
from vebi.core.stats import FeatureStats, StatsConfig

CLASSES, PER_CLASS, TOP_K, SIDE = 6, 20, 100, 112


def _model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 14 * 14, CLASSES),
    )


def _write_images(root: Path, count: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for i in range(count):
        folder = root / f"class{i % CLASSES}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)).save(folder / f"{i:05d}.png")


def _made_up(model: nn.Module, images: int, seed: int) -> tuple[Relevance, FeatureStats]:
    layers = ("4", "7")  # ReLU after the 2nd conv (56 x 56 map) and after the 3rd (28 x 28)
    space = FeatureSpace(layers, (64, 64))
    map_sizes = {"4": (56, 56), "7": (28, 28)}
    names = tuple(f"class{c}" for c in range(CLASSES))
    g = torch.Generator().manual_seed(seed)
    stats = FeatureStats(StatsConfig(space, names, top_k=TOP_K, map_sizes=map_sizes, input_size=(SIDE, SIDE)))
    stats.top_values = torch.rand(space.size, TOP_K, generator=g).sort(dim=1, descending=True).values
    stats.top_indices = torch.stack([torch.randperm(images, generator=g)[:TOP_K] for _ in range(space.size)])
    for f in space:
        h, w = map_sizes[f.layer]
        stats.top_yx[f.index, :, 0] = torch.randint(0, h, (TOP_K,), generator=g)
        stats.top_yx[f.index, :, 1] = torch.randint(0, w, (TOP_K,), generator=g)
    weights = torch.zeros(space.size, CLASSES, dtype=torch.float64)
    chosen = torch.randperm(space.size, generator=g)[: CLASSES * PER_CLASS].view(CLASSES, PER_CLASS)
    for c in range(CLASSES):
        weights[chosen[c], c] = torch.rand(PER_CLASS, generator=g, dtype=torch.float64) + 0.1
    return Relevance(weights, space, names, mu=10.0), stats


def measure(images: int, repeats: int, size: int) -> dict[str, float]:
    model = _model()
    relevance, stats = _made_up(model, images, seed=0)
    fields = receptive_fields(model, stats.space.layers)
    with tempfile.TemporaryDirectory() as tmp:
        _write_images(Path(tmp), images, seed=0)
        dataset = image_folder(tmp, with_index=False)
        needed = sorted({int(i) for c in range(CLASSES) for f in relevance.relevant(c)
                         for i in stats.top_indices[f.index]})

        def load() -> None:
            for i in needed:
                dataset[i]

        def run() -> None:
            interpret(relevance, stats, dataset, fields=fields, top_k=TOP_K, size=size, progress=False)

        load()  # warm the file cache
        times: dict[str, list[tuple[float, float]]] = {"load": [], "interpret": []}
        for _ in range(repeats):
            for name, step in (("load", load), ("interpret", run)):
                wall, cpu = time.perf_counter(), time.process_time()
                step()
                times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    out = {"images": images, "distinct": len(needed), "fields": ", ".join(f"{v.size[0]}" for v in fields.values())}
    for name, pairs in times.items():
        out[f"{name}_wall"] = statistics.median(p[0] for p in pairs)
        out[f"{name}_cpu"] = statistics.median(p[1] for p in pairs)
    for i, kind in enumerate(("wall", "cpu")):
        pairs = zip(times["load"], times["interpret"], strict=True)
        out[f"ratio_{kind}"] = statistics.median(b[i] / a[i] for a, b in pairs)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs="+", default=[1200, 2400],
                        help="sizes of the generated image folder (fewer images: more crops per image)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=64, help="side of the average images")
    args = parser.parse_args()
    torch.set_num_threads(1)
    crops = CLASSES * PER_CLASS * TOP_K
    print(f"interpret: {CLASSES} classes x {PER_CLASS} features x K={TOP_K} = {crops} crops of {SIDE}x{SIDE} PNGs, "
          f"average size {args.size}, 1 thread; load = dataset[i] once per distinct image")
    print(f"{'images':>7}{'distinct':>9}{'crops/img':>10}{'fields px':>11}{'load s':>8}{'interp s':>9}"
          f"{'ratio cpu':>10}{'ratio wall':>11}  target <= 2")
    for images in args.images:
        r = measure(images, args.repeats, args.size)
        verdict = "OK" if r["ratio_cpu"] <= 2 else "OVER"
        print(f"{r['images']:>7}{r['distinct']:>9}{crops / r['distinct']:>10.1f}{r['fields']:>11}"
              f"{r['load_cpu']:>8.3f}{r['interpret_cpu']:>9.3f}{r['ratio_cpu']:>10.2f}{r['ratio_wall']:>11.2f}"
              f"  {verdict}")
    print("times are medians of process CPU time (steadier than wall-clock on a shared machine)")


if __name__ == "__main__":
    main()
