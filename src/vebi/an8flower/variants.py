"""Dataset variants: which parts decide the class, and the colour of those parts per class.

A variant is a list of classes; each class fixes an sRGB colour (in [0, 1]) for every designated
part. Parts that are not designated take colours from distributions shared by all classes
(see :mod:`vebi.an8flower.scene`), so the designated parts are the only evidence of the class.

User variants are JSON files, either a full product of per-part palettes::

    {"name": "petal-3c", "designated": ["petals"],
     "palettes": {"petals": {"red": "#d02020", "blue": "#2040d0", "yellow": "#e0d020"}}}

or an explicit class list::

    {"name": "mine", "designated": ["centre", "stem"],
     "classes": [{"name": "a", "colours": {"centre": "#d02020", "stem": "#20a020"}}, ...]}
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

from vebi.an8flower.meshes import PARTS
from vebi.errors import VebiError

RGB = tuple[float, float, float]


@dataclass(frozen=True)
class ClassSpec:
    """One class: its name and the sRGB colour of each designated part (sorted by part name)."""

    name: str
    colours: tuple[tuple[str, RGB], ...]

    def colour(self, part: str) -> RGB:
        return dict(self.colours)[part]


@dataclass(frozen=True)
class Variant:
    """A dataset variant: the designated parts and the classes they define."""

    name: str
    designated: tuple[str, ...]
    classes: tuple[ClassSpec, ...]

    @property
    def class_names(self) -> tuple[str, ...]:
        """Folder names ``NN-name`` (the index prefix keeps ImageFolder's sorted order = class order)."""
        return tuple(f"{i:02d}-{c.name}" for i, c in enumerate(self.classes))

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "designated": list(self.designated),
            "classes": [{"name": c.name, "colours": {p: list(rgb) for p, rgb in c.colours}} for c in self.classes],
        }


def parse_colour(value: object, where: str) -> RGB:
    """``"#rrggbb"`` or ``[r, g, b]`` in [0, 1] -> an sRGB triple."""
    if isinstance(value, str) and len(value) == 7 and value.startswith("#"):
        try:
            return tuple(int(value[i : i + 2], 16) / 255.0 for i in (1, 3, 5))  # type: ignore[return-value]
        except ValueError:
            pass
    elif isinstance(value, list | tuple) and len(value) == 3 and all(isinstance(v, int | float) for v in value):
        if all(0.0 <= float(v) <= 1.0 for v in value):
            return tuple(float(v) for v in value)  # type: ignore[return-value]
    raise VebiError(f"{where}: colour {value!r} is neither '#rrggbb' nor [r, g, b] with values in [0, 1]")


def variant_from_dict(config: dict, where: str = "variant") -> Variant:
    """Build and validate a :class:`Variant` from a config dict (see the module docstring)."""
    if not isinstance(config, dict):
        raise VebiError(f"{where}: expected a JSON object")
    name = config.get("name")
    designated = config.get("designated")
    if not isinstance(name, str) or not name:
        raise VebiError(f"{where}: 'name' must be a non-empty string")
    if not isinstance(designated, list) or not designated or not all(isinstance(p, str) for p in designated):
        raise VebiError(f"{where}: 'designated' must be a non-empty list of part names from {list(PARTS)}")
    unknown = [p for p in designated if p not in PARTS]
    if unknown or len(set(designated)) != len(designated):
        raise VebiError(f"{where}: 'designated' has unknown or repeated parts {designated}; parts are {list(PARTS)}")
    parts = tuple(sorted(designated, key=PARTS.index))
    if ("palettes" in config) == ("classes" in config):
        raise VebiError(f"{where}: give exactly one of 'palettes' or 'classes'")
    classes: list[ClassSpec] = []
    if "palettes" in config:
        palettes = config["palettes"]
        if not isinstance(palettes, dict) or set(palettes) != set(parts):
            raise VebiError(f"{where}: 'palettes' must map each designated part {list(parts)} to colours")
        for part in parts:
            if not isinstance(palettes[part], dict) or not palettes[part]:
                raise VebiError(f"{where}: palettes['{part}'] must map colour names to colours")
        options = [
            [(part, cname, parse_colour(c, f"{where}: palettes['{part}']['{cname}']")) for cname, c in palettes[part].items()]
            for part in parts
        ]
        for combo in itertools.product(*options):
            classes.append(ClassSpec("+".join(cname for _, cname, _ in combo), tuple((p, rgb) for p, _, rgb in combo)))
    else:
        entries = config["classes"]
        if not isinstance(entries, list) or not entries:
            raise VebiError(f"{where}: 'classes' must be a non-empty list")
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not isinstance(entry.get("colours"), dict):
                raise VebiError(f"{where}: classes[{i}] must be {{'name': str, 'colours': {{part: colour}}}}")
            if set(entry["colours"]) != set(parts):
                raise VebiError(f"{where}: classes[{i}] must give a colour for exactly the parts {list(parts)}")
            colours = tuple((p, parse_colour(entry["colours"][p], f"{where}: classes[{i}]['{p}']")) for p in parts)
            classes.append(ClassSpec(entry["name"], colours))
    if len(classes) < 2:
        raise VebiError(f"{where}: a variant needs at least two classes, got {len(classes)}")
    names = [c.name for c in classes]
    if len(set(names)) != len(names) or any("/" in n or n in ("", ".", "..") for n in names):
        raise VebiError(f"{where}: class names must be unique and usable as folder names, got {names}")
    if len({c.colours for c in classes}) != len(classes):
        raise VebiError(f"{where}: two classes have the same colours")
    return Variant(name, parts, tuple(classes))


SINGLE_6C = variant_from_dict(
    {
        "name": "single-6c",
        "designated": ["centre"],
        "palettes": {
            "centre": {
                "red": "#d82a1e",
                "yellow": "#ecd21c",
                "green": "#2eb82e",
                "cyan": "#1ec8dc",
                "blue": "#2a3ee0",
                "magenta": "#d21ed2",
            }
        },
    }
)

# 4 centre colours x 3 leaf colours: every centre colour occurs in 3 classes and every leaf
# colour in 4, so neither part alone identifies the class.
DOUBLE_12C = variant_from_dict(
    {
        "name": "double-12c",
        "designated": ["centre", "leaves"],
        "palettes": {
            "centre": {"red": "#d82a1e", "yellow": "#ecd21c", "blue": "#2a3ee0", "magenta": "#d21ed2"},
            "leaves": {"green": "#2f9a2a", "orange": "#e8780e", "violet": "#6a2ab8"},
        },
    }
)

VARIANTS: dict[str, Variant] = {v.name: v for v in (SINGLE_6C, DOUBLE_12C)}


def load_variant(spec: str) -> Variant:
    """A built-in variant name (``single-6c``, ``double-12c``) or the path of a JSON config."""
    if spec in VARIANTS:
        return VARIANTS[spec]
    path = Path(spec)
    if not path.is_file():
        raise VebiError(f"unknown variant '{spec}': use one of {sorted(VARIANTS)} or the path of a JSON config")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VebiError(f"cannot read variant config {path}: {exc}") from None
    return variant_from_dict(config, where=str(path))
