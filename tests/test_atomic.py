"""Atomic writes: one permission policy for every file, the target untouched on failure, folders swapped whole."""

import os

import pytest
import torch
from safetensors.torch import save_file

from vebi.io.atomic import atomic_path, replace_folder, write_text


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_every_writer_leaves_the_usual_permissions(tmp_path):
    with atomic_path(tmp_path / "maps.safetensors") as tmp:  # safetensors replaces the file it writes
        save_file({"a": torch.zeros(2)}, str(tmp))
    write_text(tmp_path / "numbers.json", "{}")
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes == {"maps.safetensors": 0o666 & ~_umask(), "numbers.json": 0o666 & ~_umask()}


def test_a_failed_write_leaves_the_target_and_no_temporary_file(tmp_path):
    write_text(tmp_path / "a.json", "old")
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "a.json") as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert (tmp_path / "a.json").read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_replace_folder_swaps_the_whole_folder(tmp_path):
    (tmp_path / "target").mkdir()
    (tmp_path / "target" / "old.txt").write_text("old")
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "new.txt").write_text("new")
    replace_folder(tmp_path / "new", tmp_path / "target")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target"]
    assert [p.name for p in (tmp_path / "target").iterdir()] == ["new.txt"]
