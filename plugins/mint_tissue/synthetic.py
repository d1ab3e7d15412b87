"""Procedural H&E-like tiles, one drawing style per tissue type.

Each tile is a pink eosin background with purple hematoxylin nuclei. Tissue types differ the way
a pathologist tells them apart at low power: how dense and how large the nuclei are, their shape
(round, elongated, irregular), the stain's hue and intensity, and how the cells are arranged
(glands around lumens, follicles with colloid, sheets, cords, nests, alveoli, squamous layers).
Every tile then gets its own variation (density, size, stain, noise, orientation), scaled by
``difficulty``, so that neighbouring types overlap and a teacher cannot be perfect.

A tile depends only on (seed, label id, index): the same seed draws identical pixels whatever
else the run asks for.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

Shape = tuple[str, float, float, float, float, float]  # kind, x, y, rx, ry, angle (tile units)
Nucleus = tuple[float, float, float | None]  # x, y, angle (None: random)


@dataclass(frozen=True)
class Style:
    """How one tissue type is drawn; sizes are fractions of the tile side, density is nuclei per tile."""

    arrangement: str
    bg: tuple[int, int, int] = (232, 168, 198)
    nuc: tuple[int, int, int] = (88, 52, 132)
    density: float = 60.0
    radius: float = 0.03
    elong: float = 1.2
    irregular: float = 0.1
    units: int = 3  # glands, clusters, cords or air spaces per tile
    unit_size: float = 0.12  # gland ring / cluster spread / air-space radius
    lumen: float = 0.06  # lumen radius inside glands
    fibers: int = 0
    vacuoles: int = 0
    keratin: bool = False


STYLES: dict[str, Style] = {
    "adrenal_gland": Style("cords", bg=(242, 208, 218), nuc=(96, 62, 138), density=55, radius=0.03, elong=1.1, units=4),
    "bile_duct": Style("glands", bg=(228, 150, 182), density=45, radius=0.028, elong=1.1, units=3, unit_size=0.1,
                       lumen=0.035, fibers=12),
    "bladder": Style("layers", bg=(226, 166, 198), density=110, radius=0.03, elong=1.5, irregular=0.15),
    "breast": Style("glands", bg=(234, 160, 190), density=50, radius=0.03, units=2, unit_size=0.13, lumen=0.055,
                    fibers=8, vacuoles=3),
    "cervix": Style("layers", bg=(230, 172, 202), density=90, radius=0.024, elong=1.2),
    "colon": Style("glands", bg=(230, 160, 196), nuc=(80, 45, 128), density=90, radius=0.03, elong=2.2, units=4,
                   unit_size=0.14, lumen=0.08),
    "esophagus": Style("layers", bg=(238, 186, 210), density=55, radius=0.032, elong=1.1),
    "head_and_neck": Style("clusters", bg=(226, 158, 190), nuc=(70, 38, 112), density=100, radius=0.04, elong=1.4,
                           irregular=0.6, units=3, unit_size=0.12),
    "kidney": Style("glands", bg=(236, 150, 184), density=80, radius=0.027, units=6, unit_size=0.08, lumen=0.03),
    "liver": Style("cords", bg=(228, 140, 170), nuc=(100, 60, 140), density=40, radius=0.035, elong=1.0, units=3),
    "lung": Style("alveoli", bg=(232, 170, 200), density=30, radius=0.028, elong=1.6, units=6, unit_size=0.16),
    "ovarian": Style("sheets", bg=(222, 156, 196), density=120, radius=0.025, elong=3.0, irregular=0.05),
    "pancreatic": Style("acini", bg=(204, 140, 200), nuc=(76, 40, 124), density=110, radius=0.028, elong=1.0),
    "prostate": Style("glands", bg=(240, 196, 212), density=60, radius=0.03, units=2, unit_size=0.2, lumen=0.15,
                      irregular=0.15, fibers=4),
    "skin": Style("layers", bg=(230, 160, 190), density=80, radius=0.028, elong=1.3, fibers=10, keratin=True),
    "stomach": Style("glands", bg=(238, 196, 214), density=80, radius=0.028, elong=1.8, units=5, unit_size=0.1,
                     lumen=0.03),
    "testis": Style("tubules", bg=(228, 162, 196), nuc=(84, 48, 130), density=150, radius=0.027, units=2,
                    unit_size=0.22, lumen=0.06),
    "thyroid": Style("follicles", bg=(232, 160, 192), density=60, radius=0.022, units=5, unit_size=0.11, lumen=0.08),
    "uterus": Style("sheets", bg=(226, 162, 200), density=100, radius=0.026, elong=2.2, units=1, lumen=0.05),
}

#: The default synthetic classes: well-known, visually diverse types (keeps CPU runs fast).
DEFAULT_SYNTHETIC: tuple[str, ...] = ("breast", "colon", "kidney", "liver", "lung", "prostate", "skin", "thyroid")

WHITE = (246, 240, 246)
SUPERSAMPLE = 3


def tile_rng(seed: int, label_id: str, index: int) -> np.random.Generator:
    """The generator for one tile: a function of (seed, label, index) only."""
    return np.random.default_rng([seed & 0xFFFFFFFF, zlib.crc32(label_id.encode()), index])


def _jitter_style(style: Style, rng: np.random.Generator, difficulty: float) -> Style:
    """This tile's own variation of its type's style (biological and staining heterogeneity)."""
    d = difficulty

    def colour(rgb: tuple[int, int, int], sd: float) -> tuple[int, int, int]:
        shift = rng.normal(0, sd * d, 3) + rng.normal(0, sd * d)  # per-channel plus overall brightness
        return tuple(int(np.clip(c + s, 0, 255)) for c, s in zip(rgb, shift))  # type: ignore[return-value]

    return replace(
        style,
        bg=colour(style.bg, 9), nuc=colour(style.nuc, 12),
        density=style.density * math.exp(rng.normal(0, 0.3 * d)),
        radius=style.radius * math.exp(rng.normal(0, 0.15 * d)),
        elong=max(1.0, style.elong * math.exp(rng.normal(0, 0.15 * d))),
        irregular=float(np.clip(style.irregular + rng.normal(0, 0.08 * d), 0, 0.8)),
        units=max(1, int(round(style.units * math.exp(rng.normal(0, 0.3 * d))))),
        unit_size=style.unit_size * math.exp(rng.normal(0, 0.15 * d)),
        lumen=style.lumen * math.exp(rng.normal(0, 0.2 * d)),
    )


def _spread_centres(rng: np.random.Generator, k: int, min_dist: float) -> list[tuple[float, float]]:
    """``k`` points in the tile, kept apart where possible (rejection sampling with a bounded budget)."""
    points: list[tuple[float, float]] = []
    for _ in range(k * 30):
        if len(points) == k:
            break
        p = (float(rng.uniform(0.05, 0.95)), float(rng.uniform(0.05, 0.95)))
        if all(math.dist(p, q) >= min_dist for q in points):
            points.append(p)
    return points


def _layout(style: Style, rng: np.random.Generator) -> tuple[list[Shape], list[Nucleus]]:
    """Structures (lumens, colloid, vacuoles, bands) and nucleus positions for one tile."""
    n = max(3, int(style.density))
    shapes: list[Shape] = []
    nuclei: list[Nucleus] = []
    kind = style.arrangement
    if kind in ("glands", "follicles", "tubules"):
        centres = _spread_centres(rng, style.units, 2 * style.unit_size)
        per_gland = n * 0.8 / max(1, len(centres))
        for cx, cy in centres:
            lumen = style.lumen * rng.uniform(0.8, 1.2)
            aspect = rng.uniform(0.7, 1.0)
            angle = rng.uniform(0, math.pi)
            fill = "colloid" if kind == "follicles" else "lumen"
            shapes.append((fill, cx, cy, lumen, lumen * aspect, angle))
            for _ in range(int(per_gland)):
                t = rng.uniform(0, 2 * math.pi)
                if kind == "tubules":  # many layers of cells filling the tubule wall
                    r = rng.uniform(lumen + 0.02, style.unit_size)
                else:
                    r = lumen + style.radius * 1.4 + rng.normal(0, 0.008)
                x, y = cx + r * math.cos(t), cy + r * aspect ** (r <= lumen * 1.5) * math.sin(t)
                nuclei.append((x, y, t))  # radial: columnar cells point into the lumen
        nuclei += [(rng.uniform(-0.05, 1.05), rng.uniform(-0.05, 1.05), None) for _ in range(int(n * 0.2))]
    elif kind == "cords":
        theta = rng.uniform(0, math.pi)
        normal = (-math.sin(theta), math.cos(theta))
        offsets = np.linspace(-0.6, 0.6, style.units * 2 + 1)
        for j, off in enumerate(offsets):
            if j % 2:  # a sinusoid between two cords
                shapes.append(("sinusoid", 0.5 + off * normal[0], 0.5 + off * normal[1], 0.9, 0.012, theta))
        cords = offsets[::2]
        for _ in range(n):
            off = float(rng.choice(cords)) + rng.normal(0, 0.03)
            s = rng.uniform(-0.8, 0.8)
            x = 0.5 + s * math.cos(theta) + off * normal[0]
            y = 0.5 + s * math.sin(theta) + off * normal[1]
            nuclei.append((x, y, theta))
    elif kind == "sheets":
        g = max(2, int(math.ceil(math.sqrt(n))))
        flow = rng.uniform(0, math.pi)  # spindle cells stream in one direction, with some swirl
        for i in range(g):
            for j in range(g):
                if len(nuclei) >= n:
                    break
                x = (i + 0.5) / g + rng.normal(0, 0.25 / g)
                y = (j + 0.5) / g + rng.normal(0, 0.25 / g)
                nuclei.append((x, y, flow + 0.8 * math.sin(3 * x + 2 * y) + rng.normal(0, 0.2)))
        if style.units and style.arrangement == "sheets" and style.lumen:
            for cx, cy in _spread_centres(rng, style.units, 0.3):
                shapes.append(("lumen", cx, cy, style.lumen, style.lumen * 0.7, rng.uniform(0, math.pi)))
    elif kind == "clusters":
        centres = _spread_centres(rng, style.units, style.unit_size * 1.5)
        for _ in range(int(n * 0.85)):
            cx, cy = centres[int(rng.integers(len(centres)))]
            nuclei.append((cx + rng.normal(0, style.unit_size), cy + rng.normal(0, style.unit_size), None))
        nuclei += [(rng.uniform(0, 1), rng.uniform(0, 1), None) for _ in range(int(n * 0.15))]
    elif kind == "acini":
        k = max(2, n // 8)
        for cx, cy in _spread_centres(rng, k, 0.11):
            for m in range(8):
                t = 2 * math.pi * m / 8 + rng.normal(0, 0.2)
                nuclei.append((cx + 0.045 * math.cos(t), cy + 0.045 * math.sin(t), t))
    elif kind == "alveoli":
        spaces = _spread_centres(rng, style.units, style.unit_size * 1.6)
        radii = [style.unit_size * rng.uniform(0.8, 1.2) for _ in spaces]
        for (cx, cy), r in zip(spaces, radii):
            shapes.append(("lumen", cx, cy, r, r * rng.uniform(0.8, 1.0), rng.uniform(0, math.pi)))
        tries = 0
        while len(nuclei) < n and tries < n * 40:  # nuclei only in the thin walls between air spaces
            tries += 1
            x, y = rng.uniform(-0.05, 1.05), rng.uniform(-0.05, 1.05)
            gaps = [math.dist((x, y), c) - r for c, r in zip(spaces, radii)]
            if all(g > 0 for g in gaps) and min(gaps, default=0) < 0.04:
                nuclei.append((x, y, None))
    elif kind == "layers":
        if style.keratin:
            shapes.append(("keratin", 0.5, 0.06, 0.8, 0.08, 0.0))
        else:
            shapes.append(("lumen", 0.5, -0.02, 0.8, 0.06, 0.0))
        top = 0.16 if style.keratin else 0.08
        for _ in range(n):
            depth = rng.beta(2.2, 1.0)  # crowded at the basal layer, sparse toward the surface
            y = top + (1.05 - top) * depth
            flat = depth < 0.45  # surface cells are flattened parallel to the surface
            nuclei.append((rng.uniform(-0.05, 1.05), y, 0.0 + rng.normal(0, 0.15) if flat else None))
    else:  # scattered
        nuclei = [(rng.uniform(0, 1), rng.uniform(0, 1), None) for _ in range(n)]
    for _ in range(style.vacuoles):
        r = rng.uniform(0.06, 0.1)
        shapes.append(("vacuole", rng.uniform(0, 1), rng.uniform(0, 1), r, r * rng.uniform(0.85, 1), 0.0))
    return shapes, nuclei


def _ellipse(x: float, y: float, rx: float, ry: float, angle: float, irregular: float,
             rng: np.random.Generator, points: int = 14) -> list[tuple[float, float]]:
    t = np.linspace(0, 2 * math.pi, points, endpoint=False)
    wobble = 1 + irregular * rng.uniform(-0.5, 0.5, points)
    px, py = rx * np.cos(t) * wobble, ry * np.sin(t) * wobble
    ca, sa = math.cos(angle), math.sin(angle)
    return [(float(x + a * ca - b * sa), float(y + a * sa + b * ca)) for a, b in zip(px, py)]


def render_tile(label_id: str, *, seed: int, index: int, size: int = 64, difficulty: float = 1.0) -> np.ndarray:
    """One ``(size, size, 3)`` uint8 RGB tile of ``label_id`` (a key of :data:`STYLES`)."""
    if label_id not in STYLES:
        raise KeyError(f"No synthetic style for tissue {label_id!r}; known: {', '.join(sorted(STYLES))}")
    rng = tile_rng(seed, label_id, index)
    style = _jitter_style(STYLES[label_id], rng, difficulty)
    side = size * SUPERSAMPLE
    # Eosin background with low-frequency texture (uneven section thickness).
    texture = rng.normal(0, 1, (6, 6)).astype(np.float32)
    texture = np.asarray(Image.fromarray(texture, mode="F").resize((side, side), Image.BICUBIC))
    canvas = np.clip(np.asarray(style.bg, np.float32) * (1 + 0.05 * texture[..., None]), 0, 255)
    image = Image.fromarray(canvas.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    darker = tuple(int(c * 0.82) for c in style.bg)
    for _ in range(style.fibers):  # collagen fibres: wavy darker pink streaks
        x0, y0, theta = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0, math.pi)
        pts = [((x0 + s * math.cos(theta) + 0.02 * math.sin(9 * s)) * side,
                (y0 + s * math.sin(theta) + 0.02 * math.cos(7 * s)) * side) for s in np.linspace(-0.4, 0.4, 12)]
        draw.line(pts, fill=darker, width=max(1, SUPERSAMPLE))
    shapes, nuclei = _layout(style, rng)
    for kind, x, y, rx, ry, angle in shapes:
        poly = [(px * side, py * side) for px, py in _ellipse(x, y, rx, ry, angle, style.irregular, rng, 24)]
        if kind == "colloid":
            draw.polygon(poly, fill=(236, 128, 172), outline=WHITE)
        elif kind == "keratin":
            draw.polygon(poly, fill=(240, 150, 180))
        elif kind == "sinusoid":
            draw.polygon(poly, fill=(240, 214, 226))
        elif kind == "vacuole":
            draw.polygon(poly, fill=WHITE, outline=darker)
        else:
            draw.polygon(poly, fill=WHITE)
    for x, y, angle in nuclei:
        r = style.radius * math.exp(rng.normal(0, 0.12))
        a = rng.uniform(0, math.pi) if angle is None else angle
        shade = rng.uniform(0.8, 1.15)
        colour = tuple(int(np.clip(c * shade, 0, 255)) for c in style.nuc)
        poly = _ellipse(x, y, r * math.sqrt(style.elong), r / math.sqrt(style.elong), a, style.irregular, rng)
        draw.polygon([(px * side, py * side) for px, py in poly], fill=colour)
    image = image.filter(ImageFilter.GaussianBlur(radius=SUPERSAMPLE * rng.uniform(0.3, 0.8)))
    image = image.resize((size, size), Image.BOX)
    pixels = np.asarray(image, np.float32)
    # Slide-level stain variation and sensor noise.
    pixels = pixels * rng.normal(1, 0.04 * difficulty, 3) + rng.normal(0, 3 * difficulty, pixels.shape)
    pixels = np.rot90(pixels, k=int(rng.integers(4)))
    if rng.integers(2):
        pixels = pixels[:, ::-1]
    return np.ascontiguousarray(np.clip(pixels, 0, 255).astype(np.uint8))


def hematoxylin_fraction(tile: np.ndarray) -> float:
    """Share of nucleus-coloured (dark purple) pixels: a simple nucleus-density measure."""
    rgb = tile.astype(np.float32)
    dark = rgb.mean(axis=-1) < 150
    bluish = rgb[..., 2] > rgb[..., 1] + 20
    return float((dark & bluish).mean())
