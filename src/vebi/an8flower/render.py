"""Render one flower: the RGB image and the label map of the part visible at each pixel.

The image is Mitsuba's ``direct`` integrator (key light with shadows + a flat ambient term, no
inter-reflection, so no part's colour reaches pixels where that part is not seen) with a box pixel
filter, composited over the background: ``out = L + (1 - alpha) * bg`` in linear RGB, then a
per-channel gain and sRGB encoding. The label map comes from a second pass at one sample per pixel
centre: it is exact (no blending), and it respects occlusion because it is the first surface hit by
the pixel's central ray. In that pass every part emits its label (Mitsuba's ``path`` integrator with
``max_depth`` 1 returns only the emission of the first hit) with each triangle turned to face the
camera, since area emitters are one-sided; a map that is not whole integer labels exactly where the
rays hit something (alpha) is redone with Mitsuba's ``aov`` integrator (``shape_index``), the same
labels at three to four times the cost.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vebi.an8flower.backgrounds import background_image
from vebi.an8flower.meshes import PARTS
from vebi.an8flower.scene import RenderParams, build_scene, linear_to_srgb, scalar_variant, sensor_dict, srgb_to_linear

BACKGROUND_LABEL = 0
PART_LABELS: dict[str, int] = {part: i + 1 for i, part in enumerate(PARTS)}


@dataclass(frozen=True)
class Rendering:
    """``image`` (H, W, 3) uint8 sRGB and ``labels`` (H, W) uint8: 0 background, ``PART_LABELS[part]``."""

    image: np.ndarray
    labels: np.ndarray

    def mask(self, parts: tuple[str, ...] | list[str]) -> np.ndarray:
        """Boolean (H, W) mask of the pixels where any of ``parts`` is visible."""
        return part_mask(self.labels, parts)


def part_mask(labels: np.ndarray, parts: tuple[str, ...] | list[str]) -> np.ndarray:
    """Boolean mask of the pixels of a label map that show one of ``parts``."""
    return np.isin(labels, [PART_LABELS[p] for p in parts])


def _centre_render(mi, scene, params: RenderParams, size: int, integrator: dict) -> np.ndarray:
    """``integrator``'s output from one ray through each pixel centre."""
    sensor = mi.load_dict(sensor_dict(params, size, 1, centred=True))
    return np.asarray(mi.render(scene, integrator=mi.load_dict(integrator), sensor=sensor, spp=1), dtype=np.float64)


def _centre_aovs(mi, scene, params: RenderParams, size: int, aovs: str) -> np.ndarray:
    """Mitsuba ``aov`` channels from one ray through each pixel centre."""
    return _centre_render(mi, scene, params, size, {"type": "aov", "aovs": aovs})


def _aov_labels(mi, scene, params: RenderParams, size: int) -> np.ndarray:
    index = _centre_aovs(mi, scene, params, size, "index:shape_index")[..., 0]
    # shape_index is 0 for a miss and 1 + the position in scene.shapes() for a hit
    lookup = np.zeros(len(scene.shapes()) + 1, dtype=np.uint8)
    for i, shape in enumerate(scene.shapes()):
        lookup[i + 1] = PART_LABELS[shape.id()]
    return lookup[np.rint(index).astype(np.int64)]


def facing(verts: np.ndarray, faces: np.ndarray, eye: np.ndarray) -> np.ndarray:
    """``faces`` (M, 3) with the winding of each triangle whose front side (see
    :func:`vebi.an8flower.meshes.face_normals`) looks away from ``eye`` reversed: n . (eye - v0) >= 0 for all."""
    v = verts.reshape(-1, 3).astype(np.float64)
    f = faces.reshape(-1, 3).astype(np.uint32)  # a copy: the caller's faces stay as they are
    v0 = v[f[:, 0]]
    normals = np.cross(v[f[:, 1]] - v0, v[f[:, 2]] - v0)
    away = np.einsum("ij,ij->i", normals, np.asarray(eye, dtype=np.float64) - v0) < 0
    f[away, 1:] = f[away][:, [2, 1]]
    return f


def _labels(mi, scene, params: RenderParams, size: int) -> np.ndarray:
    """The label map of ``scene``, whose emitters and triangle windings it changes: use it last."""
    import drjit as dr

    eye = params.camera.frame()[0]
    values = mi.traverse(scene)
    for shape in scene.shapes():
        name = shape.id()
        values[f"{name}.emitter.radiance.value"] = [float(PART_LABELS[name]), 0.0, 0.0]
        faces = facing(np.asarray(values[f"{name}.vertex_positions"]), np.asarray(values[f"{name}.faces"]), eye)
        values[f"{name}.faces"] = dr.scalar.ArrayXu(faces.ravel())
    values.update()
    rgba = _centre_render(mi, scene, params, size, {"type": "path", "max_depth": 1})
    labels = np.rint(rgba[..., 0])
    whole = np.abs(rgba[..., 0] - labels).max() < 1e-3 and labels.max() <= max(PART_LABELS.values())
    if whole and np.array_equal(labels > 0, rgba[..., 3] > 0.5):
        return labels.astype(np.uint8)
    return _aov_labels(mi, scene, params, size)


def render(params: RenderParams, size: int, spp: int = 9) -> Rendering:
    """Render the image (``spp`` stratified samples per pixel, a square) and the visible-part label map of ``params``."""
    with scalar_variant() as mi:
        scene = build_scene(params, size, spp)
        rgba = np.asarray(mi.render(scene, spp=spp, seed=params.render_seed), dtype=np.float64)
        labels = _labels(mi, scene, params, size)
    background = srgb_to_linear(background_image(params.background, size))
    linear = rgba[..., :3] + (1.0 - np.clip(rgba[..., 3:], 0.0, 1.0)) * background
    linear = linear * np.asarray(params.gain)
    image = np.rint(linear_to_srgb(linear) * 255.0).astype(np.uint8)
    return Rendering(image=image, labels=labels)


def render_labels(params: RenderParams, size: int, hide: tuple[str, ...] = ()) -> np.ndarray:
    """Only the label map (optionally with the parts in ``hide`` removed from the scene)."""
    with scalar_variant() as mi:
        return _labels(mi, build_scene(params, size, 1, hide=hide), params, size)


def probe(params: RenderParams, size: int, hide: tuple[str, ...] = ()) -> np.ndarray:
    """(H, W, 4): distance to and albedo of the first surface hit through each pixel centre (0 = miss).

    Hiding a part changes these values exactly where that part was the first surface hit (the
    surface behind it is farther away, or absent), so comparing probes with and without a part
    checks the label maps' visibility.
    """
    with scalar_variant() as mi:
        return _centre_aovs(mi, build_scene(params, size, 1, hide=hide), params, size, "distance:depth,albedo:albedo")
