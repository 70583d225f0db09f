"""Where the demo's evaluation spends its time, this checkout against an earlier one, side by side.

Runs the evaluate stage of ``vebi demo`` exactly as the demo would (the options of
:func:`vebi.demo.stages` for the default :class:`vebi.demo.DemoConfig`) on a finished demo folder,
once per source tree, each in its own process, interleaved over ``--repeats``; prints the median
seconds per method (maps, localisation and deletion/insertion together), the ablation, the sanity
check and the total. ``--before SRC`` is the ``src`` folder of an earlier checkout, e.g.::

    git worktree add /tmp/vebi-before 89ff194
    python benchmarks/bench_evaluate.py runs/demo --before /tmp/vebi-before/src [--repeats 3] [--threads 2]

Each tree evaluates with its own demo settings, so the table shows what a user of each version
waits for. ``--preload LIB`` adds, per tree, a column of the same run with ``LD_PRELOAD=LIB`` (the
allocator the ``vebi`` command chooses itself, see ``vebi.cli._malloc``; the other columns run on
the system's malloc).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[1] / "src"

CHILD = """
import json, sys, torch
from pathlib import Path
if int(sys.argv[2]):
    torch.set_num_threads(int(sys.argv[2]))
from vebi.demo import DemoConfig, stages
from vebi.evaluate.runner import evaluate_run
stage = next(s for s in stages(DemoConfig(), Path(sys.argv[1])) if not callable(s) and s.step == "evaluate")
options = dict(stage.options)
result = evaluate_run(options.pop("run"), progress=False, **options)
print(json.dumps({"timings": result.timings, "settings": {k: result.settings.get(k) for k in
      ("steps", "faithfulness_images", "sanity_images", "method_options")}}))
"""


def run(src: Path, demo: Path, threads: int, preload: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    env["PYTHONPATH"] = str(src)
    if preload:
        env["LD_PRELOAD"] = preload
    out = subprocess.run([sys.executable, "-c", CHILD, str(demo), str(threads)], env=env, check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("demo", type=Path, help="a folder written by `vebi demo --out DEMO`")
    parser.add_argument("--before", type=Path, help="the src folder of an earlier checkout")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    parser.add_argument("--preload", help="a malloc library (e.g. libtcmalloc_minimal.so.4's path): one more "
                        "column per tree with it preloaded")
    args = parser.parse_args()
    sources = {"before": args.before, "now": HERE} if args.before else {"now": HERE}
    trees = {name: (src, None) for name, src in sources.items()}
    if args.preload:
        trees.update({f"{name}+pre": (src, args.preload) for name, src in sources.items()})
    runs: dict[str, list[dict]] = {name: [] for name in trees}
    for _ in range(args.repeats):
        for name, (src, preload) in trees.items():
            runs[name].append(run(src, args.demo, args.threads, preload))
    for name, results in runs.items():
        print(f"{name}: {json.dumps(results[0]['settings'])}")
    keys = list(dict.fromkeys(k for results in runs.values() for r in results for k in r["timings"]))
    med = {name: {k: statistics.median(r["timings"].get(k, float("nan")) for r in results) for k in keys}
           for name, results in runs.items()}
    print(f"median of {args.repeats} run(s), threads {args.threads or 'default'}; seconds")
    width = max(10, *(len(n) + 2 for n in trees))
    header = f"{'':<22}" + "".join(f"{n:>{width}}" for n in trees)
    print(header)
    print("-" * len(header))
    for key in keys:
        print(f"{key:<22}" + "".join(f"{med[n][key]:>{width}.1f}" for n in trees))
    first = next(iter(trees))
    print(f"{'total / ' + first:<22}" + "".join(f"{med[n]['total'] / med[first]['total']:>{width}.2f}" for n in trees))


if __name__ == "__main__":
    main()
