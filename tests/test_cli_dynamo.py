"""The console script imports torchvision without TorchDynamo, and TorchDynamo still works when used.

Each check runs in a fresh interpreter: the test process has imported TorchDynamo long before."""

import subprocess
import sys
import textwrap

PRELUDE = textwrap.dedent("""
    import sys
    from vebi.cli._dynamo import _stand_in, deferred_dynamo

    def state():
        module = sys.modules.get("torch._dynamo.utils")
        return "absent" if module is None else ("stand-in" if type(module).__name__ == "_StandIn" else "real")
""")

EXPLAIN_THEN_USE = PRELUDE + textwrap.dedent("""
    with deferred_dynamo():
        import torch, torchvision
        from vebi.explanation.backward import channel_seed, forward_with_rules, guided_rules
        print("after torchvision", state(), "torch._dynamo" in sys.modules)
        loader = torchvision.__loader__
        print("its loader", type(loader).__name__, torchvision.__spec__.loader is loader)
        model = torchvision.models.resnet18(weights=None).eval()
        fw = forward_with_rules(model, torch.rand(1, 3, 32, 32), guided_rules(stride_fix=True), ["layer2"])
        signal = fw.backward({"layer2": channel_seed(fw.activations["layer2"], torch.tensor([3]))})
        print("after an explanation", state(), tuple(signal.shape), "sympy" in sys.modules)
        roi_align = sys.modules["torchvision.ops.roi_align"]  # holds the stand-in's is_compile_supported
        supported = roi_align.is_compile_supported("cpu")
        print("after is_compile_supported", state(), supported)
        from torch._dynamo.utils import is_compile_supported
        print("same answer", is_compile_supported("cpu") == supported)
    print("after the block", state(), any(type(f).__name__ == "_Finder" for f in sys.meta_path))
""")

OTHER_ORDERS = PRELUDE + textwrap.dedent("""
    with deferred_dynamo():
        import torch
    print("torchvision never imported", any(type(f).__name__ == "_Finder" for f in sys.meta_path))
    with _stand_in():  # TorchDynamo imported for real while the stand-in is in place
        import torch._dynamo
        print("inside", state())
        print("works", torch._dynamo.utils.is_compile_supported("cpu") in (True, False),
              torch.compile(lambda x: x - 1, backend="eager")(torch.ones(2)).tolist())
    print("after", state())
    with deferred_dynamo():
        import torchvision
        print("TorchDynamo imported before torchvision", state())
""")


def _run(script: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_torchvision_and_an_explanation_leave_dynamo_unimported_until_it_is_used():
    assert _run(EXPLAIN_THEN_USE) == [
        "after torchvision absent False",
        "its loader SourceFileLoader True",
        "after an explanation absent (1, 3, 32, 32) False",  # nor sympy (0.7 s): the seeds are no grad_outputs
        "after is_compile_supported real True",
        "same answer True",
        "after the block real False",
    ]


def test_dynamo_imported_for_real_while_the_stand_in_is_there_or_before_torchvision_works():
    assert _run(OTHER_ORDERS) == [
        "torchvision never imported False",
        "inside real",
        "works True [0.0, 0.0]",
        "after real",
        "TorchDynamo imported before torchvision real",
    ]
