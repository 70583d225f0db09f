"""Render parameters of one image (shape, colours, camera, light, background) and its Mitsuba scene.

:func:`sample_params` draws every nuisance factor from distributions shared by all classes; only
the colours of the variant's designated parts depend on the class. The number of random draws
does not depend on the class either, so two classes with the same seed differ only in those colours.
"""

from __future__ import annotations

import colorsys
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from vebi.an8flower.backgrounds import Background, sample_background
from vebi.an8flower.meshes import PARTS, FlowerShape, flower_meshes, sample_shape
from vebi.an8flower.variants import RGB, Variant
from vebi.errors import VebiError

# Shared colour distributions of the parts that are not designated: (hue range in degrees,
# saturation range, value range) in HSV, sRGB.
NUISANCE_COLOURS: dict[str, tuple[tuple[float, float], tuple[float, float], tuple[float, float]]] = {
    "centre": ((0.0, 360.0), (0.1, 0.5), (0.5, 0.95)),
    "petals": ((0.0, 360.0), (0.05, 0.45), (0.7, 1.0)),
    "stem": ((75.0, 150.0), (0.4, 0.8), (0.3, 0.6)),
    "leaves": ((75.0, 150.0), (0.4, 0.8), (0.3, 0.65)),
}


@dataclass(frozen=True)
class Camera:
    """Orbit camera around ``target``: azimuth about +y from +z, elevation, distance, roll (degrees)."""

    azimuth: float
    elevation: float
    distance: float
    target: tuple[float, float, float]
    roll: float
    fov: float

    def frame(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(origin, target, up) of the camera in world coordinates."""
        az, el = np.radians(self.azimuth), np.radians(self.elevation)
        direction = np.array([np.sin(az) * np.cos(el), np.sin(el), np.cos(az) * np.cos(el)])
        target = np.asarray(self.target, dtype=np.float64)
        origin = target + self.distance * direction
        forward = -direction
        right = np.cross(forward, [0.0, 1.0, 0.0])
        right /= np.linalg.norm(right)
        up0 = np.cross(right, forward)
        roll = np.radians(self.roll)
        up = np.cos(roll) * up0 + np.sin(roll) * right
        return origin, target, up


@dataclass(frozen=True)
class Light:
    """A directional key light (world azimuth/elevation of where it comes from) and ambient sky."""

    azimuth: float
    elevation: float
    irradiance: float
    tint: tuple[float, float, float]
    ambient: float

    def towards_light(self) -> np.ndarray:
        az, el = np.radians(self.azimuth), np.radians(self.elevation)
        return np.array([np.sin(az) * np.cos(el), np.sin(el), np.cos(az) * np.cos(el)])


@dataclass(frozen=True)
class RenderParams:
    """Everything that determines one image; with the renderer version, its pixels are a function of this."""

    label: int
    shape: FlowerShape
    colours: tuple[tuple[str, RGB], ...]  # sRGB colour of every part, in PARTS order
    camera: Camera
    light: Light
    background: Background
    gain: tuple[float, float, float]  # per-channel colour gain applied to the final image
    render_seed: int

    def colour(self, part: str) -> RGB:
        return dict(self.colours)[part]

    def to_dict(self) -> dict:
        return {
            "label": self.label,
            "shape": self.shape.to_dict(),
            "colours": {p: list(c) for p, c in self.colours},
            "camera": {**self.camera.__dict__, "target": list(self.camera.target)},
            "light": {**self.light.__dict__, "tint": list(self.light.tint)},
            "background": self.background.to_dict(),
            "gain": list(self.gain),
            "render_seed": self.render_seed,
        }

    @staticmethod
    def from_dict(d: dict) -> RenderParams:
        return RenderParams(
            label=int(d["label"]),
            shape=FlowerShape.from_dict(d["shape"]),
            colours=tuple((p, tuple(d["colours"][p])) for p in PARTS),
            camera=Camera(**{**d["camera"], "target": tuple(d["camera"]["target"])}),
            light=Light(**{**d["light"], "tint": tuple(d["light"]["tint"])}),
            background=Background.from_dict(d["background"]),
            gain=tuple(d["gain"]),
            render_seed=int(d["render_seed"]),
        )


def _hsv(h: float, s: float, v: float) -> RGB:
    return tuple(float(c) for c in colorsys.hsv_to_rgb((h / 360.0) % 1.0, s, v))  # type: ignore[return-value]


def _jitter(rgb: RGB, u: np.ndarray) -> RGB:
    """Slight colour noise: hue +-6 degrees, saturation x[0.85, 1], value x[0.85, 1.05]."""
    h, s, v = colorsys.rgb_to_hsv(*rgb)
    h = h * 360.0 + (u[0] - 0.5) * 12.0
    s = s * (0.85 + 0.15 * u[1])
    v = min(1.0, v * (0.85 + 0.2 * u[2]))
    return _hsv(h, s, v)


def sample_params(variant: Variant, label: int, rng: np.random.Generator) -> RenderParams:
    """Draw one image's parameters for class ``label`` of ``variant``."""
    if not 0 <= label < len(variant.classes):
        raise VebiError(f"label {label} is not a class of variant {variant.name} (0..{len(variant.classes) - 1})")
    shape = sample_shape(rng)
    camera = Camera(
        azimuth=float(shape.head_yaw + rng.uniform(-50.0, 50.0)),
        elevation=float(rng.uniform(-5.0, 35.0)),
        distance=float(rng.uniform(5.0, 6.2)),
        target=(float(rng.uniform(-0.25, 0.25)), float(-0.55 + rng.uniform(-0.25, 0.25)), 0.0),
        roll=float(rng.uniform(-30.0, 30.0)),
        fov=32.0,
    )
    light = Light(
        azimuth=float(camera.azimuth + rng.uniform(-75.0, 75.0)),
        elevation=float(rng.uniform(10.0, 70.0)),
        irradiance=float(rng.uniform(2.0, 3.6)),
        tint=tuple(float(t) for t in rng.uniform(0.92, 1.08, size=3)),  # type: ignore[arg-type]
        ambient=float(rng.uniform(0.2, 0.45)),
    )
    background = sample_background(rng)
    nuisance = rng.uniform(size=(len(PARTS), 3))
    jitter = rng.uniform(size=(len(PARTS), 3))
    gain = tuple(float(g) for g in rng.uniform(0.95, 1.05, size=3))
    render_seed = int(rng.integers(2**31))
    colours = []
    for i, part in enumerate(PARTS):
        if part in variant.designated:
            colour = _jitter(variant.classes[label].colour(part), jitter[i])
        else:
            (h0, h1), (s0, s1), (v0, v1) = NUISANCE_COLOURS[part]
            u = nuisance[i]
            colour = _hsv(h0 + (h1 - h0) * u[0], s0 + (s1 - s0) * u[1], v0 + (v1 - v0) * u[2])
        colours.append((part, colour))
    params = RenderParams(label, shape, tuple(colours), camera, light, background, gain, render_seed)  # type: ignore[arg-type]
    # rounded so that the manifest's JSON is short and reproduces the render exactly
    return RenderParams.from_dict(_round_floats(params.to_dict()))


def _round_floats(value, digits: int = 6):
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {k: _round_floats(v, digits) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_round_floats(v, digits) for v in value]
    return value


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    c = np.asarray(c, dtype=np.float64)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(c: np.ndarray) -> np.ndarray:
    c = np.clip(np.asarray(c, dtype=np.float64), 0.0, 1.0)
    return np.where(c <= 0.0031308, c * 12.92, 1.055 * c ** (1.0 / 2.4) - 0.055)


@contextlib.contextmanager
def scalar_variant() -> Iterator:
    """The ``mitsuba`` module with the ``scalar_rgb`` variant active; a caller's other variant is restored after."""
    import mitsuba as mi

    if mi.variant() is None:  # nothing to restore
        mi.set_variant("scalar_rgb")
    if mi.variant() == "scalar_rgb":
        yield mi
        return
    with mi.scoped_set_variant("scalar_rgb"):
        yield mi


@contextlib.contextmanager
def render_threads(count: int) -> Iterator[None]:
    """Mitsuba renders on ``count`` threads inside the block, on as many as before after it. On small
    images a second thread mostly waits: at 32 px, two threads render 1.3x faster for 2x the CPU time."""
    import drjit as dr

    before = dr.thread_count()
    dr.set_thread_count(count)
    try:
        yield
    finally:
        dr.set_thread_count(before)


def _mesh(mi, name: str, verts: np.ndarray, faces: np.ndarray, rgb: RGB, ambient: np.ndarray):
    import drjit as dr

    props = mi.Properties()
    reflectance = srgb_to_linear(np.asarray(rgb))
    props["bsdf"] = mi.load_dict(
        {"type": "twosided", "inner": {"type": "diffuse", "reflectance": {"type": "rgb", "value": reflectance.tolist()}}}
    )
    # flat ambient term ambient * albedo, seen only by camera rays: sampling_weight 0 keeps the
    # direct integrator from using it to light other surfaces
    radiance = (ambient * reflectance).tolist()
    props["emitter"] = mi.load_dict({"type": "area", "radiance": {"type": "rgb", "value": radiance}, "sampling_weight": 0.0})
    mesh = mi.Mesh(name, len(verts), len(faces), props)
    buffers = mi.traverse(mesh)
    buffers["vertex_positions"] = dr.scalar.ArrayXf(verts.astype(np.float32).ravel())
    buffers["faces"] = dr.scalar.ArrayXu(faces.astype(np.uint32).ravel())
    buffers.update()
    mesh.set_id(name)
    return mesh


def sensor_dict(params: RenderParams, size: int, spp: int, centred: bool) -> dict:
    """A perspective sensor: ``spp`` (a square) stratified jittered samples per pixel, or with
    ``centred`` one sample at each pixel centre (exact label maps). Use inside :func:`scalar_variant`."""
    import mitsuba as mi

    origin, target, up = params.camera.frame()
    sampler = (
        {"type": "stratified", "sample_count": 1, "jitter": False}
        if centred
        else {"type": "stratified", "sample_count": spp, "jitter": True}
    )
    return {
        "type": "perspective",
        "fov": params.camera.fov,
        "to_world": mi.ScalarTransform4f().look_at(origin=origin.tolist(), target=target.tolist(), up=up.tolist()),
        "film": {
            "type": "hdrfilm",
            "width": size,
            "height": size,
            "pixel_format": "rgba",
            "rfilter": {"type": "box"},
        },
        "sampler": sampler,
    }


def build_scene(params: RenderParams, size: int, spp: int = 9, *, hide: tuple[str, ...] = ()):
    """The Mitsuba scene of ``params`` without the parts in ``hide``.

    Lighting: a directional key light with shadows (the ``direct`` integrator, no inter-reflection)
    plus a flat ambient term ``ambient * tint * albedo`` emitted by every surface towards the camera
    only. The box pixel filter keeps every sample inside its own pixel. Use inside :func:`scalar_variant`.
    """
    import mitsuba as mi

    scene: dict = {
        "type": "scene",
        "integrator": {"type": "direct", "bsdf_samples": 0, "emitter_samples": 1},
        "sensor": sensor_dict(params, size, spp, centred=False),
    }
    light = params.light
    ambient = light.ambient * np.asarray(light.tint)
    for part, (verts, faces) in flower_meshes(params.shape).items():
        if part not in hide:
            scene[part] = _mesh(mi, part, verts, faces, params.colour(part), ambient)
    scene["sun"] = {
        "type": "directional",
        "direction": (-light.towards_light()).tolist(),
        "irradiance": {"type": "rgb", "value": [light.irradiance * t for t in light.tint]},
    }
    return mi.load_dict(scene)
