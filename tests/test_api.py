import importlib
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
