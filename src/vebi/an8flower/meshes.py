"""Procedural flower part meshes (numpy): receptacle, petals, stem and leaves.

World frame: y points up; the stem rises from ``(0, -stem_length, 0)`` to the head at the origin;
the head faces ``n = (sin yaw cos pitch, sin pitch, cos yaw cos pitch)`` (towards +z for yaw 0).
Every part is an indexed triangle mesh ``(V (N, 3) float64, F (M, 3) uint32)``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

PARTS: tuple[str, ...] = ("centre", "petals", "stem", "leaves")

Mesh = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class LeafShape:
    """One leaf: where it sits on the stem and how it is shaped (angles in degrees)."""

    position: float  # fraction of the stem length from the base
    azimuth: float  # direction around the stem
    elevation: float  # midrib angle above the horizontal
    length: float
    width: float
    droop: float  # downward bend of the tip, in units of length
    fold: float  # V-fold across the midrib, in units of width
    twist: float  # rotation of the blade about its midrib (0: blade spans the horizontal)


@dataclass(frozen=True)
class FlowerShape:
    """Every shape parameter of one flower instance (lengths in scene units, angles in degrees)."""

    petal_count: int
    petal_length: float
    petal_width: float
    petal_curl: float  # tip lift along the head normal, in units of petal length
    petal_cup: float  # base angle of the petals out of the head plane
    petal_phase: float  # rotation of the petal ring about the head normal
    petal_jitter: tuple[float, ...]  # per-petal angular offset
    centre_radius: float
    centre_height: float  # dome height relative to its radius
    head_pitch: float
    head_yaw: float
    stem_length: float
    stem_radius: float
    stem_bend: tuple[float, float]  # (x, z) offset of the stem's middle control point
    leaves: tuple[LeafShape, ...]

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> FlowerShape:
        fields = dict(d)
        fields["petal_jitter"] = tuple(fields["petal_jitter"])
        fields["stem_bend"] = tuple(fields["stem_bend"])
        fields["leaves"] = tuple(LeafShape(**leaf) for leaf in fields["leaves"])
        return FlowerShape(**fields)


def sample_shape(rng: np.random.Generator) -> FlowerShape:
    """Draw one flower's shape; the number of draws is fixed so later draws do not depend on it."""
    petal_count = int(rng.integers(5, 10))
    jitter = rng.uniform(-8.0, 8.0, size=9)[:petal_count]
    leaf_count = int(rng.integers(2, 4))
    first = rng.uniform(0.0, 360.0)
    gaps = rng.uniform(110.0, 200.0, size=3)
    positions = np.sort(rng.uniform(0.18, 0.62, size=3))
    leaf_values = rng.uniform(size=(3, 6))
    leaves = []
    for k in range(leaf_count):
        u = leaf_values[k]
        leaves.append(
            LeafShape(
                position=float(positions[k]),
                azimuth=float((first + gaps[:k].sum()) % 360.0),
                elevation=float(15.0 + 35.0 * u[0]),
                length=float(0.75 + 0.4 * u[1]),
                width=float(0.3 + 0.15 * u[2]),
                droop=float(0.35 * u[3]),
                fold=float(0.25 * u[4]),
                twist=float(np.sign(u[5] - 0.5) * (25.0 + 80.0 * abs(u[5] - 0.5))),
            )
        )
    return FlowerShape(
        petal_count=petal_count,
        petal_length=float(rng.uniform(0.7, 1.1)),
        petal_width=float(rng.uniform(0.28, 0.5)),
        petal_curl=float(rng.uniform(-0.15, 0.45)),
        petal_cup=float(rng.uniform(0.0, 35.0)),
        petal_phase=float(rng.uniform(0.0, 360.0)),
        petal_jitter=tuple(float(j) for j in jitter),
        centre_radius=float(rng.uniform(0.24, 0.34)),
        centre_height=float(rng.uniform(0.45, 0.8)),
        head_pitch=float(rng.uniform(15.0, 50.0)),
        head_yaw=float(rng.uniform(-20.0, 20.0)),
        stem_length=float(rng.uniform(1.9, 2.4)),
        stem_radius=float(rng.uniform(0.04, 0.06)),
        stem_bend=(float(rng.uniform(-0.35, 0.35)), float(rng.uniform(-0.25, 0.25))),
        leaves=tuple(leaves),
    )


def head_frame(shape: FlowerShape) -> np.ndarray:
    """Rows (a, b, n): two in-plane axes and the facing normal of the flower head."""
    pitch, yaw = np.radians(shape.head_pitch), np.radians(shape.head_yaw)
    n = np.array([np.sin(yaw) * np.cos(pitch), np.sin(pitch), np.cos(yaw) * np.cos(pitch)])
    a = np.cross([0.0, 1.0, 0.0], n)
    a /= np.linalg.norm(a)
    b = np.cross(n, a)
    return np.stack([a, b, n])


def _grid_faces(rows: int, cols: int, wrap: bool = False) -> np.ndarray:
    """Two triangles per cell of a (rows x cols) vertex grid; ``wrap`` closes the columns."""
    c_end = cols if wrap else cols - 1
    r, c = np.meshgrid(np.arange(rows - 1), np.arange(c_end), indexing="ij")
    v00 = r * cols + c
    v01 = r * cols + (c + 1) % cols
    v10 = v00 + cols
    v11 = v01 + cols
    tris = np.concatenate([np.stack([v00, v10, v11], -1), np.stack([v00, v11, v01], -1)])
    return tris.reshape(-1, 3).astype(np.uint32)


def _merge(meshes: list[Mesh]) -> Mesh:
    verts, faces, offset = [], [], 0
    for v, f in meshes:
        verts.append(v)
        faces.append(f + offset)
        offset += len(v)
    return np.concatenate(verts), np.concatenate(faces).astype(np.uint32)


def centre_mesh(shape: FlowerShape, rings: int = 10, segments: int = 20) -> Mesh:
    """A flattened ellipsoid (the receptacle) whose upper dome rises above the petal ring."""
    frame = head_frame(shape)
    theta = np.linspace(0.0, np.pi, rings + 1)[1:-1]
    phi = np.linspace(0.0, 2 * np.pi, segments, endpoint=False)
    th, ph = np.meshgrid(theta, phi, indexing="ij")
    r = shape.centre_radius
    local = np.stack(
        [r * np.sin(th) * np.cos(ph), r * np.sin(th) * np.sin(ph), r * shape.centre_height * np.cos(th)], -1
    ).reshape(-1, 3)
    poles = np.array([[0.0, 0.0, r * shape.centre_height], [0.0, 0.0, -r * shape.centre_height]])
    local = np.concatenate([local, poles])
    faces = [_grid_faces(rings - 1, segments, wrap=True)]
    top, bottom = len(local) - 2, len(local) - 1
    j = np.arange(segments)
    faces.append(np.stack([np.full(segments, top), j, (j + 1) % segments], -1))
    last = (rings - 2) * segments
    faces.append(np.stack([np.full(segments, bottom), last + (j + 1) % segments, last + j], -1))
    lift = 0.25 * r * shape.centre_height
    return (local + [0.0, 0.0, lift]) @ frame, np.concatenate(faces).astype(np.uint32)


def petals_mesh(shape: FlowerShape, along: int = 10, across: int = 7) -> Mesh:
    """``petal_count`` curved petals around the head normal, each a pointed, slightly cupped blade."""
    frame = head_frame(shape)
    s, t = np.meshgrid(np.linspace(0.0, 1.0, along), np.linspace(-1.0, 1.0, across), indexing="ij")
    profile = np.sin(np.pi * (0.08 + 0.92 * s)) ** 0.8 * (1.0 - 0.35 * s)
    radial = 0.55 * shape.centre_radius + s * shape.petal_length
    lateral = t * 0.5 * shape.petal_width * profile
    cup = np.tan(np.radians(shape.petal_cup))
    height = (
        (radial - 0.55 * shape.centre_radius) * cup
        + shape.petal_curl * shape.petal_length * s**2
        + 0.06 * shape.petal_width * t**2
    )
    parts = []
    faces = _grid_faces(along, across)
    for k in range(shape.petal_count):
        angle = np.radians(shape.petal_phase + 360.0 * k / shape.petal_count + shape.petal_jitter[k])
        ca, sa = np.cos(angle), np.sin(angle)
        layer = 0.012 * (k % 2) + 0.004 * k / shape.petal_count
        x = radial * ca - lateral * sa
        y = radial * sa + lateral * ca
        local = np.stack([x, y, height + layer], -1).reshape(-1, 3)
        parts.append((local @ frame, faces))
    return _merge(parts)


def stem_curve(shape: FlowerShape, t: np.ndarray) -> np.ndarray:
    """Quadratic Bezier from the base to just behind the head, evaluated at ``t`` in [0, 1]."""
    n = head_frame(shape)[2]
    p0 = np.array([0.0, -shape.stem_length, 0.0])
    p2 = -0.08 * n
    p1 = np.array([shape.stem_bend[0], -0.5 * shape.stem_length, shape.stem_bend[1]])
    t = t[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2


def stem_mesh(shape: FlowerShape, along: int = 16, around: int = 8) -> Mesh:
    """A tube of radius ``stem_radius`` around :func:`stem_curve`."""
    t = np.linspace(0.0, 1.0, along)
    centre = stem_curve(shape, t)
    tangent = np.gradient(centre, axis=0)
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)
    side = np.cross(tangent, [0.0, 0.0, 1.0])
    side /= np.linalg.norm(side, axis=1, keepdims=True)
    other = np.cross(tangent, side)
    phi = np.linspace(0.0, 2 * np.pi, around, endpoint=False)
    ring = np.cos(phi)[None, :, None] * side[:, None] + np.sin(phi)[None, :, None] * other[:, None]
    verts = (centre[:, None] + shape.stem_radius * ring).reshape(-1, 3)
    return verts, _grid_faces(along, around, wrap=True)[:, ::-1].copy()


def leaves_mesh(shape: FlowerShape, along: int = 10, across: int = 7) -> Mesh:
    """Each leaf: a pointed blade from the stem, raised by ``elevation``, drooping and V-folded."""
    s, t = np.meshgrid(np.linspace(0.0, 1.0, along), np.linspace(-1.0, 1.0, across), indexing="ij")
    faces = _grid_faces(along, across)
    parts = []
    for leaf in shape.leaves:
        base = stem_curve(shape, np.array([leaf.position]))[0]
        az, el = np.radians(leaf.azimuth), np.radians(leaf.elevation)
        u = np.array([np.cos(az) * np.cos(el), np.sin(el), np.sin(az) * np.cos(el)])
        horizontal = np.array([-np.sin(az), 0.0, np.cos(az)])
        tw = np.radians(leaf.twist)
        v = np.cos(tw) * horizontal + np.sin(tw) * np.cross(u, horizontal)
        w = np.cross(u, v)
        profile = np.sin(np.pi * s) ** 0.9 * (1.0 - 0.3 * s) + 0.15 * (1 - s) ** 4
        along_pos = 0.6 * shape.stem_radius + s * leaf.length
        half_width = 0.5 * leaf.width * profile
        points = (
            base
            + along_pos[..., None] * u
            + (t * half_width)[..., None] * v
            + (leaf.fold * leaf.width * np.abs(t) * profile)[..., None] * w
            - (leaf.droop * leaf.length * s**2)[..., None] * np.array([0.0, 1.0, 0.0])
        )
        parts.append((points.reshape(-1, 3), faces))
    return _merge(parts)


def face_normals(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Unnormalised normals ``(v1 - v0) x (v2 - v0)`` (Mitsuba's front side for this winding)."""
    v0, v1, v2 = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    return np.cross(v1 - v0, v2 - v0)


def thicken(mesh: Mesh, thickness: float) -> Mesh:
    """Turn an open surface into two sheets ``thickness`` apart whose fronts both face outwards.

    Mitsuba's area emitters emit on the front side only; with both sheets facing out, the flat
    ambient term (see :mod:`vebi.an8flower.scene`) shows on both sides of a petal or leaf.
    """
    verts, faces = mesh
    normals = np.zeros_like(verts)
    fn = face_normals(verts, faces)
    for k in range(3):
        np.add.at(normals, faces[:, k], fn)
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    half = 0.5 * thickness * normals
    top = (verts + half, faces)
    bottom = (verts - half, faces[:, ::-1].copy())
    return _merge([top, bottom])


THICKNESS = 0.004


def flower_meshes(shape: FlowerShape) -> dict[str, Mesh]:
    """All parts of one flower, keyed by the names in :data:`PARTS`; every front side faces outwards."""
    return {
        "centre": centre_mesh(shape),
        "petals": thicken(petals_mesh(shape), THICKNESS),
        "stem": stem_mesh(shape),
        "leaves": thicken(leaves_mesh(shape), THICKNESS),
    }
