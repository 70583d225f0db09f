"""an8Flower re-created: Mitsuba-rendered flowers whose class is decided by the colour of known parts.

``generate(root, DatasetConfig(load_variant("single-6c")))`` writes images, exact visible-part
masks and a manifest; see :mod:`vebi.an8flower.dataset` for the layout.
"""

from vebi.an8flower.contact import contact_sheet
from vebi.an8flower.dataset import (
    DatasetConfig,
    GenerateResult,
    ImageRecord,
    generate,
    load_mask,
    load_part_masks,
    mask_path,
    plan,
    read_manifest,
)
from vebi.an8flower.meshes import PARTS
from vebi.an8flower.render import PART_LABELS, Rendering
from vebi.an8flower.scene import RenderParams, sample_params
from vebi.an8flower.variants import DOUBLE_12C, SINGLE_6C, VARIANTS, Variant, load_variant

__all__ = [
    "DOUBLE_12C",
    "PARTS",
    "PART_LABELS",
    "SINGLE_6C",
    "VARIANTS",
    "DatasetConfig",
    "GenerateResult",
    "ImageRecord",
    "RenderParams",
    "Rendering",
    "Variant",
    "contact_sheet",
    "generate",
    "load_mask",
    "load_part_masks",
    "load_variant",
    "mask_path",
    "plan",
    "read_manifest",
    "sample_params",
]
