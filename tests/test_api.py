import importlib
import json
import subprocess
import sys
from importlib.metadata import version

import vebi


def test_public_api_names_resolve_to_functions_not_modules():
    for module in ("vebi.core.collect", "vebi.interpretation.crops", "vebi.explanation.explainer", "vebi.run"):
        importlib.import_module(module)  # a later submodule import must not shadow an exported name
    assert set(vebi.__all__) == set(vebi._EXPORTS) | {"VebiError", "__version__"}
    for name in vebi.__all__:
        assert getattr(vebi, name) is not None, name
    assert callable(vebi.collect) and callable(vebi.interpret) and callable(vebi.fit_relevance)
    assert vebi.collect.__module__ == "vebi.core.collect"
    assert vebi.interpret.__module__ == "vebi.interpretation.crops"


def test_version_comes_from_package_metadata():
    assert vebi.__version__ == version("vebi")


def test_vebi_error_is_a_value_error():
    assert issubclass(vebi.VebiError, ValueError)


def test_importing_vebi_does_not_import_torch():
    code = "import sys, vebi; vebi.VebiError; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_report_and_the_fit_do_not_import_torchvision():
    # torchvision brings in torch._dynamo: ~2 s of every command that imports it, a third of `vebi report`
    code = "import sys, vebi.report, vebi.core.lasso; print('torchvision' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_cli_help_does_not_import_torch():
    code = ("import sys; from vebi.cli import main; "
            "codes = [main(['--help']), main(['collect', '--help']), main(['evaluate', '--help'])]; "
            "print(codes, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[0, 0, 0] False"


def test_a_wrong_folder_or_file_is_told_before_torch_is_imported(tmp_path):
    """Every command that reads a run or data folder checks it first: the error comes in a fraction
    of a second, not after the seconds of importing torch."""
    absent, run, made = tmp_path / "absent", tmp_path / "run", tmp_path / "made"
    run.mkdir()
    (run / "run.json").write_text("{}")
    made.mkdir()
    (made / "run.json").write_text(json.dumps({"schema": 1, "model": {"spec": "torchvision:resnet18", "weights": None},
                                               "data": {"path": str(tmp_path), "size": 8}, "layers": []}))
    commands = [["collect", "torchvision:resnet18", str(absent), "-o", str(tmp_path / "out")],
                ["fit", str(absent)], ["interpret", str(absent), str(tmp_path)],
                ["explain", str(absent), "x.jpg"], ["evaluate", str(absent), str(tmp_path)], ["report", str(absent)],
                ["report", str(run)], ["fit", str(run)],
                ["explain", str(made), str(absent / "x.jpg")], ["evaluate", str(made), str(absent)],
                ["interpret", str(made), str(absent)]]
    code = ("import sys, json; from vebi.cli import main; "
            f"codes = [main(c) for c in json.loads(sys.argv[1])]; print(codes, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, json.dumps(commands)], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == f"{[2] * len(commands)} False", out.stderr
    errors = out.stderr.strip().splitlines()
    assert len(errors) == len(commands), errors
    assert all(line.startswith("vebi: error: ") for line in errors), errors
    assert "data folder" in errors[0] and "not found" in errors[0]
    assert "no stats.json" in errors[6] and "schema version None" in errors[7]
    assert "cannot read image" in errors[8] and "data folder" in errors[9] and "data folder" in errors[10]
