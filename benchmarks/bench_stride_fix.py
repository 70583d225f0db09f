"""The stride fix's four routes on the strided convolutions of common CNNs: which one is fastest, which one vebi takes.

``vebi.explanation.stride_fix.stride_fixed_conv_input_grad`` computes the same input-space signal
four ways (direct, pointwise, polyphase, transposed; see its docstring) and ``_route`` picks one from
the layer's shape. For each strided convolution of MobileNetV2, ResNet-50, ResNet-18, ConvNeXt-T and
the an8Flower net (at their usual input sizes), and each batch size, this times every route that
applies (median of repeats within a time budget), checks that they agree (float32: to 1e-5 of the
largest value) and prints the routes' milliseconds, the route vebi takes now, the one the rule before
this change took (depthwise -> direct, 1 x 1 unpadded -> pointwise, at most 8 input channels ->
polyphase, else transposed), and the time now / before:

    python benchmarks/bench_stride_fix.py [--batches 1 8 32] [--threads N] [--model resnet50 ...]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torchvision

from vebi.an8flower.net import an8net
from vebi.explanation import stride_fix

SIZES = {"an8net": 112}


def strided_convs(name: str) -> list[tuple[str, torch.nn.Conv2d, tuple[int, int]]]:
    """(name, conv, input size) of every conv with stride > 1 met in one forward pass at the model's size."""
    model = an8net() if name == "an8net" else getattr(torchvision.models, name)(weights=None)
    size = SIZES.get(name, 224)
    found: list = []
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: found.append((n, m, tuple(i[0].shape[-2:]))))
             for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d) and m.stride != (1, 1)]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, size, size))
    for h in hooks:
        h.remove()
    return found


def route_before(weight: torch.Tensor, padding: tuple[int, int], groups: int) -> str:
    if groups > 1 and weight.shape[1] == 1:
        return "direct"
    if tuple(weight.shape[-2:]) == (1, 1) and padding == (0, 0):
        return "pointwise"
    return "polyphase" if groups == 1 and weight.shape[1] <= 8 else "transposed"


def median_ms(fn, budget: float) -> float:
    fn()
    times: list[float] = []
    end = time.perf_counter() + budget
    while len(times) < 3 or (time.perf_counter() < end and len(times) < 25):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs="+",
                        default=["mobilenet_v2", "resnet50", "resnet18", "convnext_tiny", "an8net"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    parser.add_argument("--budget", type=float, default=0.3, help="seconds of repeats per route and shape")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"cpu, {torch.get_num_threads()} threads, linear upsampling; milliseconds per call (median)")
    header = (f"{'model':<13} {'layer':<22} {'weight':<16} {'input':<8} {'batch':>5} {'direct':>8} {'pointwise':>9} "
              f"{'polyphase':>9} {'transposed':>10} {'before':>10} {'now':>10} {'now/before':>10} {'now/best':>8}")
    print(header)
    print("-" * len(header))
    chosen = stride_fix._route
    totals = {"before": 0.0, "now": 0.0}
    for model in args.model:
        for layer, conv, (h, w) in strided_convs(model):
            weight = conv.weight.detach()
            padding = stride_fix.as_pair(conv.padding)
            for batch in args.batches:
                out = torch.nn.functional.conv2d(torch.zeros(1, conv.in_channels, h, w), weight, None, conv.stride,
                                                 conv.padding, conv.dilation, conv.groups).shape[-2:]
                g = torch.randn(batch, conv.out_channels, *out, generator=torch.Generator().manual_seed(0))
                picked: list[str] = []

                def spy(*a):
                    picked.append(chosen(*a))
                    return picked[-1]

                times, results = {}, {}
                try:
                    stride_fix._route = spy
                    stride_fix.stride_fixed_conv_input_grad(g, weight, (h, w), conv.stride, padding, conv.dilation,
                                                            conv.groups)
                    now = picked[-1]
                    for route in stride_fix._ROUTES:
                        if (route == "pointwise" and (weight.shape[-2:] != (1, 1) or padding != (0, 0))) or (
                                route == "polyphase" and (conv.groups > 1 or weight.shape[1] > 8)):
                            continue
                        stride_fix._route = lambda *a, r=route: r

                        def call():
                            return stride_fix.stride_fixed_conv_input_grad(
                                g, weight, (h, w), conv.stride, padding, conv.dilation, conv.groups)
                        results[route] = call()
                        times[route] = median_ms(call, args.budget)
                finally:
                    stride_fix._route = chosen
                scale = float(results["direct"].abs().max())
                for route, value in results.items():
                    torch.testing.assert_close(value, results["direct"], rtol=0, atol=1e-5 * scale)
                before = route_before(weight, padding, conv.groups)
                totals["before"] += times[before]
                totals["now"] += times[now]
                cells = "".join(f"{times[r]:>{n + 1}.2f}" if r in times else " " * n + "-"
                                for r, n in zip(stride_fix._ROUTES, (8, 9, 9, 10)))
                print(f"{model:<13} {layer:<22} {str(tuple(weight.shape)):<16} {f'{h}x{w}':<8} {batch:>5}{cells} "
                      f"{before:>10} {now:>10} {times[now] / times[before]:>10.2f} "
                      f"{times[now] / min(times.values()):>8.2f}", flush=True)
    print(f"sum over the rows: before {totals['before']:.1f} ms, now {totals['now']:.1f} ms "
          f"({totals['now'] / totals['before']:.2f})")


if __name__ == "__main__":
    main()
