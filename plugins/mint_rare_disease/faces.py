"""Synthetic face images drawn from a case's facial HPO terms.

Rare-disease teachers read a face photo (the "gestalt") next to the notes. Where a case has no
photo, this module draws a simple frontal face with PIL whose geometry follows the facial terms:

- about 100 specific terms move named parameters (hypertelorism -> eyes further apart,
  downslanted palpebral fissures -> eyes tilted down at the outer corner, micrognathia -> a
  smaller lower jaw, low-set ears -> ears lower, ...);
- a term without its own mapping inherits, at reduced strength, the effect of its nearest mapped
  ancestors ("Progressive microcephaly" shrinks the head like "Microcephaly");
- every unmapped term also adds a small perturbation chosen by a hash of its id, so each facial
  term carries some signal, deterministically;
- a mild per-case jitter (seeded by the case key) keeps two cases with the same terms from
  producing the same picture, so a teacher cannot learn a lookup table.

Same terms and same key give byte-identical PNGs. The iris is drawn in a fixed colour
(:data:`IRIS`) that appears nowhere else, which lets tests measure eye positions in the image.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Iterable

from PIL import Image, ImageDraw

from mint_core.io import atomic_path
from mint_rare_disease import hpo

BACKGROUND = (236, 236, 236)
SKIN = (226, 190, 160)
HAIR = (70, 50, 38)
LINE = (95, 62, 50)
IRIS = (38, 72, 140)
SCLERA = (250, 250, 250)
LIPS = (184, 96, 96)


@dataclass
class FaceParams:
    """Face geometry, each 0 on an average face and about +-1 for a marked finding."""

    head_size: float = 0.0
    head_width: float = 0.0       # + brachycephaly / broad, - dolichocephaly / narrow
    face_length: float = 0.0
    forehead_height: float = 0.0  # + high forehead (hairline up)
    forehead_prominence: float = 0.0
    forehead_width: float = 0.0
    hair_density: float = 0.0
    eye_spacing: float = 0.0      # + hypertelorism, - hypotelorism
    eye_tilt: float = 0.0         # + upslanting, - downslanting
    eye_length: float = 0.0       # palpebral fissure length
    eye_opening: float = 0.0      # palpebral fissure height
    eye_depth: float = 0.0        # + deep-set, - proptosis
    ptosis: float = 0.0
    epicanthus: float = 0.0
    brow_thickness: float = 0.0
    brow_arch: float = 0.0
    synophrys: float = 0.0
    nose_length: float = 0.0
    nose_width: float = 0.0
    nasal_bridge: float = 0.0     # + prominent, - depressed
    nose_tip: float = 0.0         # + bulbous
    nares: float = 0.0            # + anteverted (nostrils visible)
    philtrum_length: float = 0.0
    philtrum_smooth: float = 0.0
    mouth_width: float = 0.0
    upper_lip: float = 0.0        # vermilion thickness
    lower_lip: float = 0.0
    mouth_corners: float = 0.0    # + downturned
    mouth_open: float = 0.0
    jaw: float = 0.0              # + prognathia, - micrognathia
    chin_point: float = 0.0
    midface: float = 0.0          # - midface retrusion / malar flattening (flat cheeks)
    cheeks: float = 0.0           # + full cheeks
    ear_low: float = 0.0          # + low-set
    ear_rotation: float = 0.0     # + posteriorly rotated
    ear_size: float = 0.0
    ear_protrusion: float = 0.0
    asymmetry: float = 0.0
    coarseness: float = 0.0

    def add(self, effects: dict[str, float], weight: float = 1.0) -> None:
        for name, delta in effects.items():
            setattr(self, name, getattr(self, name) + weight * delta)


PARAM_NAMES: tuple[str, ...] = tuple(f.name for f in fields(FaceParams))

#: term id -> parameter changes. Ancestors of listed terms inherit nothing; descendants inherit.
TERM_EFFECTS: dict[str, dict[str, float]] = {
    # head size and shape
    "HP:0040195": {"head_size": -0.8},                      # Decreased head circumference
    "HP:0000252": {"head_size": -1.2},                      # Microcephaly
    "HP:0040194": {"head_size": 0.8},                       # Increased head circumference
    "HP:0000256": {"head_size": 1.2},                       # Macrocephaly
    "HP:0000268": {"head_width": -1.2, "face_length": 0.6},  # Dolichocephaly
    "HP:0030799": {"head_width": -1.0, "face_length": 0.5},  # Scaphocephaly
    "HP:0000248": {"head_width": 1.2, "face_length": -0.5},  # Brachycephaly
    "HP:0001357": {"asymmetry": 1.0},                       # Plagiocephaly
    "HP:0000243": {"forehead_width": -1.2, "forehead_prominence": 0.5},  # Trigonocephaly
    "HP:0005469": {"head_width": 0.5, "forehead_height": 0.4},  # Flat occiput
    "HP:0000269": {"head_width": -0.5, "face_length": 0.3},  # Prominent occiput
    "HP:0000239": {"head_size": 0.5, "forehead_prominence": 0.6},  # Large fontanelles
    # overall face
    "HP:0000276": {"face_length": 1.2},                     # Long face
    "HP:0011219": {"face_length": -1.0},                    # Short face
    "HP:0000275": {"head_width": -0.9},                     # Narrow face
    "HP:0100729": {"head_size": 0.4, "face_length": 0.6},   # Large face
    "HP:0000274": {"head_size": -0.4, "face_length": -0.5},  # Small face
    "HP:0000311": {"head_width": 0.9, "face_length": -0.7, "cheeks": 0.8},  # Round face
    "HP:0000325": {"forehead_width": 1.0, "chin_point": 1.2},  # Triangular face
    "HP:0000321": {"jaw": 0.8, "chin_point": -1.0, "head_width": 0.4},  # Square face
    "HP:0000280": {"coarseness": 1.3, "nose_width": 0.6, "upper_lip": 0.6, "lower_lip": 0.6},  # Coarse facies
    "HP:0012368": {"midface": -1.0, "nasal_bridge": -0.6},  # Flat face
    "HP:0000324": {"asymmetry": 1.2},                       # Facial asymmetry
    "HP:0000298": {"mouth_corners": 0.6, "eye_opening": -0.5, "brow_arch": -0.6},  # Mask-like facies
    "HP:0002058": {"mouth_open": 0.8, "ptosis": 0.6, "mouth_corners": 0.5},  # Myopathic facies
    "HP:0000297": {"mouth_open": 0.6, "mouth_corners": 0.5},  # Facial hypotonia
    "HP:0000293": {"cheeks": 1.2},                          # Full cheeks
    "HP:0005346": {"mouth_corners": 0.4, "brow_arch": -0.5},  # Abnormal facial expression
    "HP:0005335": {"ptosis": 0.7, "eye_opening": -0.5, "brow_arch": -0.4},  # Sleepy facial expression
    "HP:0000301": {"mouth_open": 0.5, "mouth_corners": 0.4},  # Abnormality of facial musculature
    "HP:0030319": {"mouth_open": 0.7, "ptosis": 0.3, "mouth_corners": 0.5},  # Weakness of facial musculature
    "HP:0010628": {"asymmetry": 0.9, "mouth_corners": 0.6},  # Facial palsy
    "HP:0000204": {"philtrum_smooth": -0.8, "upper_lip": -0.5, "asymmetry": 0.5},  # Cleft upper lip
    # forehead and hairline
    "HP:0011220": {"forehead_prominence": 1.2},             # Prominent forehead
    "HP:0002007": {"forehead_prominence": 1.3, "forehead_width": 0.5},  # Frontal bossing
    "HP:0000348": {"forehead_height": 1.2},                 # High forehead
    "HP:0009890": {"forehead_height": 1.0},                 # High anterior hairline
    "HP:0000294": {"forehead_height": -1.2},                # Low anterior hairline
    "HP:0000337": {"forehead_width": 1.2},                  # Broad forehead
    "HP:0000341": {"forehead_width": -1.2},                 # Narrow forehead
    "HP:0000340": {"forehead_prominence": -1.0, "forehead_height": -0.4},  # Sloping forehead
    "HP:0000349": {"forehead_height": -0.5, "hair_density": 0.3},  # Widow's peak
    "HP:0002209": {"hair_density": -1.2},                   # Sparse scalp hair
    # eyes
    "HP:0000316": {"eye_spacing": 1.2},                     # Hypertelorism
    "HP:0000601": {"eye_spacing": -1.2},                    # Hypotelorism
    "HP:0000506": {"eye_spacing": 0.7, "epicanthus": 0.3},  # Telecanthus
    "HP:0000582": {"eye_tilt": 1.2},                        # Upslanted palpebral fissure
    "HP:0000494": {"eye_tilt": -1.2},                       # Downslanted palpebral fissures
    "HP:0012745": {"eye_length": -1.1},                     # Short palpebral fissure
    "HP:0000637": {"eye_length": 1.1},                      # Long palpebral fissure
    "HP:0045025": {"eye_opening": -1.0},                    # Narrow palpebral fissure
    "HP:0000581": {"eye_length": -1.0, "eye_opening": -0.8},  # Blepharophimosis
    "HP:0000490": {"eye_depth": 1.2},                       # Deeply set eye
    "HP:0000520": {"eye_depth": -1.2, "eye_opening": 0.6},  # Proptosis
    "HP:0000508": {"ptosis": 1.2},                          # Ptosis
    "HP:0000286": {"epicanthus": 1.2},                      # Epicanthus
    "HP:0000574": {"brow_thickness": 1.2},                  # Thick eyebrow
    "HP:0045075": {"brow_thickness": -1.2},                 # Sparse eyebrow
    "HP:0000664": {"synophrys": 1.3, "brow_thickness": 0.4},  # Synophrys
    "HP:0002553": {"brow_arch": 1.2},                       # Highly arched eyebrow
    # nose
    "HP:0003189": {"nose_length": 1.2},                     # Long nose
    "HP:0003196": {"nose_length": -1.2, "nares": 0.4},      # Short nose
    "HP:0000445": {"nose_width": 1.2},                      # Wide nose
    "HP:0000460": {"nose_width": -1.2},                     # Narrow nose
    "HP:0000414": {"nose_tip": 1.2},                        # Bulbous nose
    "HP:0000455": {"nose_tip": 0.8, "nose_width": 0.6},     # Broad nasal tip
    "HP:0000448": {"nose_length": 0.6, "nasal_bridge": 0.7},  # Prominent nose
    "HP:0000463": {"nares": 1.2},                           # Anteverted nares
    "HP:0005280": {"nasal_bridge": -1.2},                   # Depressed nasal bridge
    "HP:0000431": {"nasal_bridge": -0.4, "eye_spacing": 0.4, "nose_width": 0.4},  # Wide nasal bridge
    "HP:0000426": {"nasal_bridge": 1.2},                    # Prominent nasal bridge
    "HP:0000437": {"nose_tip": -0.8, "nasal_bridge": -0.4},  # Depressed nasal tip
    # midface and cheeks
    "HP:0011800": {"midface": -1.2},                        # Midface retrusion
    "HP:0000327": {"midface": -1.0, "jaw": 0.3},            # Hypoplasia of the maxilla
    "HP:0000272": {"midface": -0.9},                        # Malar flattening
    # philtrum and lips
    "HP:0000343": {"philtrum_length": 1.2},                 # Long philtrum
    "HP:0000322": {"philtrum_length": -1.2},                # Short philtrum
    "HP:0000319": {"philtrum_smooth": 1.3},                 # Smooth philtrum
    "HP:0002002": {"philtrum_smooth": -1.0},                # Deep philtrum
    "HP:0000188": {"philtrum_length": -0.7, "mouth_open": 0.4},  # Short upper lip
    "HP:0011341": {"philtrum_length": 0.7},                 # Long upper lip
    "HP:0000233": {"upper_lip": -0.8, "lower_lip": -0.8},   # Thin vermilion border
    "HP:0012471": {"upper_lip": 0.8, "lower_lip": 0.8},     # Thick vermilion border
    "HP:0000219": {"upper_lip": -1.2},                      # Thin upper lip vermilion
    "HP:0000215": {"upper_lip": 1.2},                       # Thick upper lip vermilion
    "HP:0010282": {"lower_lip": -1.2},                      # Thin lower lip vermilion
    "HP:0000179": {"lower_lip": 1.2},                       # Thick lower lip vermilion
    "HP:0000232": {"lower_lip": 1.0, "mouth_open": 0.3},    # Everted lower lip vermilion
    "HP:0010804": {"upper_lip": 0.5, "mouth_corners": 0.5},  # Tented upper lip vermilion
    # mouth
    "HP:0000154": {"mouth_width": 1.2},                     # Wide mouth
    "HP:0000160": {"mouth_width": -1.2},                    # Narrow mouth
    "HP:0002714": {"mouth_corners": 1.2},                   # Downturned corners of mouth
    "HP:0000194": {"mouth_open": 1.2},                      # Open mouth
    # jaw and chin
    "HP:0009118": {"jaw": -0.8},                            # Aplasia/Hypoplasia of the mandible
    "HP:0000347": {"jaw": -1.2},                            # Micrognathia
    "HP:0000278": {"jaw": -0.9},                            # Retrognathia
    "HP:0000303": {"jaw": 1.2},                             # Mandibular prognathia
    "HP:0000307": {"chin_point": 1.2},                      # Pointed chin
    "HP:0000331": {"jaw": -0.6, "face_length": -0.3},       # Short chin
    # ears
    "HP:0000357": {"ear_low": 0.6},                         # Abnormal location of ears
    "HP:0000369": {"ear_low": 1.2},                         # Low-set ears
    "HP:0000358": {"ear_rotation": 1.2},                    # Posteriorly rotated ears
    "HP:0000400": {"ear_size": 1.2},                        # Macrotia
    "HP:0008551": {"ear_size": -1.2},                       # Microtia
    "HP:0000411": {"ear_protrusion": 1.2},                  # Protruding ear
    "HP:0000385": {"ear_size": -0.4},                       # Small earlobe
}

#: Each parameter's range: several findings add up, and the face must stay a face.
PARAM_LIMIT = 2.0
#: Least scale factor of any length: with every parameter within PARAM_LIMIT, a radius, a width or
#: a lip thickness never reaches zero or goes negative (PIL rejects an arc or ellipse whose box is
#: inverted: a bulbous-nose factor of 1 + 0.7 * nose_tip is negative at nose_tip = -2).
MIN_SCALE = 0.2

#: Strength of an inherited ancestor effect and of the hashed per-term perturbation.
INHERITED_WEIGHT = 0.7
HASHED_DELTA = 0.8
JITTER_SD = 0.06


def _hashed_effect(term_id: str) -> dict[str, float]:
    """Two parameters and signs picked by a hash of the term id: stable across runs and machines."""
    digest = hashlib.sha256(term_id.encode()).digest()
    first = PARAM_NAMES[digest[0] % len(PARAM_NAMES)]
    second = PARAM_NAMES[digest[1] % len(PARAM_NAMES)]
    sign1 = 1.0 if digest[2] % 2 else -1.0
    sign2 = 1.0 if digest[3] % 2 else -1.0
    effect = {first: sign1 * HASHED_DELTA}
    effect[second] = effect.get(second, 0.0) + sign2 * HASHED_DELTA * 0.6
    return effect


def _nearest_mapped_ancestors(term_id: str) -> list[str]:
    mapped = [a for a in hpo.ancestors(term_id) if a in TERM_EFFECTS]
    # Keep only the most specific mapped ancestors: drop one that is an ancestor of another.
    return sorted(a for a in mapped if not any(a in hpo.ancestors(b) for b in mapped if b != a))


def term_effects(term_id: str) -> dict[str, float]:
    """The total parameter change one facial term causes (before jitter)."""
    if term_id in TERM_EFFECTS:
        return dict(TERM_EFFECTS[term_id])
    params = FaceParams()
    for ancestor in _nearest_mapped_ancestors(term_id):
        params.add(TERM_EFFECTS[ancestor], INHERITED_WEIGHT)
    params.add(_hashed_effect(term_id))
    return {name: value for name in PARAM_NAMES if (value := getattr(params, name)) != 0.0}


def face_params(term_ids: Iterable[str], *, key: str, jitter: float = JITTER_SD) -> FaceParams:
    """Parameters for a face showing ``term_ids``; ``key`` (case id and seed) seeds the jitter."""
    params = FaceParams()
    for term_id in sorted(set(term_ids)):
        params.add(term_effects(term_id))
    rng = random.Random(f"face:{key}")
    for name in PARAM_NAMES:
        value = getattr(params, name) + rng.gauss(0.0, jitter)
        setattr(params, name, value)
    return _clamped(params)


def _clamped(params: FaceParams) -> FaceParams:
    """A copy with every parameter in [-PARAM_LIMIT, PARAM_LIMIT] (a non-finite value becomes 0)."""
    values = {name: getattr(params, name) for name in PARAM_NAMES}
    return FaceParams(**{name: max(-PARAM_LIMIT, min(PARAM_LIMIT, v)) if math.isfinite(v) else 0.0
                         for name, v in values.items()})


def _scale(*changes: float) -> float:
    """``1 + sum(changes)``, floored at :data:`MIN_SCALE` so no length collapses or turns inside out."""
    total = 1.0
    for change in changes:  # added left to right, exactly as the written-out formula was
        total += change
    return max(MIN_SCALE, total)


def _mix(color: tuple[int, int, int], other: tuple[int, int, int], t: float) -> tuple[int, int, int]:
    t = max(0.0, min(1.0, t))
    return tuple(int(round(a + (b - a) * t)) for a, b in zip(color, other))  # type: ignore[return-value]


def _rotated_ellipse(cx: float, cy: float, rx: float, ry: float, angle: float, n: int = 24) -> list[tuple[float, float]]:
    cos, sin = math.cos(angle), math.sin(angle)
    points = []
    for i in range(n):
        t = 2 * math.pi * i / n
        x, y = rx * math.cos(t), ry * math.sin(t)
        points.append((cx + x * cos - y * sin, cy + x * sin + y * cos))
    return points


def draw_face(params: FaceParams, *, size: int = 128, offset: tuple[float, float] = (0.0, 0.0)) -> Image.Image:
    """Draw the face for ``params`` on a ``size`` x ``size`` RGB canvas; any parameters give a valid
    drawing (they are clamped to :data:`PARAM_LIMIT`, every length to at least :data:`MIN_SCALE`)."""
    p = _clamped(params)
    s = size / 128.0
    image = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    width = max(1, round((1.2 + 0.6 * max(0.0, p.coarseness)) * s))
    cx, cy = size / 2 + offset[0] * s, size / 2 + 4 * s + offset[1] * s
    half_w = 36 * s * _scale(0.14 * p.head_size) * _scale(0.14 * p.head_width)
    half_h = 46 * s * _scale(0.14 * p.head_size) * _scale(0.13 * p.face_length, -0.05 * p.head_width)
    tilt = 0.09 * p.asymmetry  # plagiocephaly / asymmetry: a slight roll of the whole face

    # Ears first: the face outline covers their inner half.
    ear_y = cy - 0.05 * half_h + 0.28 * half_h * p.ear_low
    ear_rx = 5.5 * s * _scale(0.3 * p.ear_size, 0.45 * p.ear_protrusion)
    ear_ry = 10 * s * _scale(0.35 * p.ear_size)
    for side in (-1, 1):
        angle = side * 0.45 * p.ear_rotation
        ex = cx + side * (half_w - 1.5 * s + 4.0 * s * p.ear_protrusion)
        draw.polygon(_rotated_ellipse(ex, ear_y + side * tilt * half_w, ear_rx, ear_ry, angle), fill=SKIN, outline=LINE)

    # Head outline: an ellipse whose lower half follows the jaw and chin, upper half the forehead.
    outline = []
    for i in range(72):
        t = 2 * math.pi * i / 72
        x, y = math.cos(t), math.sin(t)  # y > 0 is the lower half (image coordinates)
        if y > 0:
            x *= _scale(0.16 * p.jaw * y, -0.30 * p.chin_point * y * y, 0.12 * p.cheeks * (1 - y))
            y *= _scale(0.12 * p.jaw, 0.05 * p.chin_point)
        else:
            x *= _scale(0.15 * p.forehead_width * (-y))
            y *= _scale(0.07 * p.forehead_prominence)
        px, py = cx + x * half_w, cy + y * half_h
        outline.append((px, py + tilt * (px - cx)))
    draw.polygon(outline, fill=SKIN, outline=LINE)

    # Hair above the hairline: a chord of the head ellipse, lighter when sparse.
    hairline = cy - half_h * (0.60 + 0.16 * p.forehead_height)
    v = max(-0.99, min(0.99, (hairline - cy) / half_h))
    a = math.degrees(math.asin(v))
    hair_color = _mix(HAIR, SKIN, 0.6 * max(0.0, -p.hair_density) + 0.1)
    box = [cx - half_w * 1.04, cy - half_h * 1.06, cx + half_w * 1.04, cy + half_h * 1.06]
    draw.chord(box, 180 - a, 360 + a, fill=hair_color)

    # Forehead prominence: a highlight (prominent) or shadow (sloping) patch.
    fh_y = (hairline + cy - 0.2 * half_h) / 2
    shade = _mix(SKIN, (255, 235, 215) if p.forehead_prominence > 0 else (190, 150, 120), 0.6 * abs(p.forehead_prominence))
    draw.ellipse([cx - 0.45 * half_w, fh_y - 0.12 * half_h, cx + 0.45 * half_w, fh_y + 0.12 * half_h], fill=shade)

    # Cheeks: flat midface shows as shadow, full cheeks as round highlights.
    cheek_y = cy + 0.22 * half_h
    cheek_tone = _mix(SKIN, (185, 140, 110), 0.55 * max(0.0, -p.midface)) if p.midface < 0 else \
        _mix(SKIN, (235, 150, 140), 0.55 * max(0.0, p.cheeks))
    cheek_r = 0.15 * half_w * _scale(0.45 * max(0.0, p.cheeks))
    for side in (-1, 1):
        x = cx + side * 0.55 * half_w
        draw.ellipse([x - cheek_r, cheek_y - cheek_r, x + cheek_r, cheek_y + cheek_r], fill=cheek_tone)

    # Eyes.
    eye_y = cy - 0.12 * half_h - 0.05 * half_h * p.midface
    eye_dx = half_w * (0.37 + 0.12 * p.eye_spacing)  # >= 0.13 * half_w within PARAM_LIMIT
    eye_rx = 7.0 * s * _scale(0.25 * p.eye_length)
    eye_ry = 3.6 * s * _scale(0.28 * p.eye_opening, -0.12 * p.eye_depth)
    slant = 0.35 * p.eye_tilt
    for side in (-1, 1):
        ex, ey = cx + side * eye_dx, eye_y + tilt * side * eye_dx
        if p.eye_depth > 0:  # deep-set: a shadow around the eye
            r = eye_rx * 1.25
            draw.ellipse([ex - r, ey - eye_ry * 2.0, ex + r, ey + eye_ry * 2.0],
                         fill=_mix(SKIN, (150, 105, 85), 0.6 * p.eye_depth))
        # the outer corner (away from the midline) goes up for upslanting fissures
        almond = _rotated_ellipse(ex, ey, eye_rx, eye_ry, side * slant, n=20)
        draw.polygon(almond, fill=SCLERA)
        iris_r = min(eye_ry * 0.95, eye_rx * 0.6) * _scale(0.25 * max(0.0, -p.eye_depth))
        draw.ellipse([ex - iris_r, ey - iris_r, ex + iris_r, ey + iris_r], fill=IRIS)
        if p.ptosis > 0:  # upper lid droops over the eye
            lid = ey - eye_ry * (1.0 - 0.55 * min(1.5, p.ptosis))
            draw.rectangle([ex - eye_rx - 1, ey - eye_ry * 1.6, ex + eye_rx + 1, lid], fill=SKIN)
        draw.polygon(almond, outline=LINE)
        if p.epicanthus > 0.2:  # a fold over the inner corner
            inner = ex - side * eye_rx
            fold = 3.5 * s * min(1.5, p.epicanthus)
            draw.line([(inner, ey - eye_ry), (inner + side * fold, ey + eye_ry * 0.6)], fill=LINE, width=width)
        # eyebrow
        brow_y = ey - eye_ry - 5 * s
        arch = 2.0 * s * (1 + 1.2 * p.brow_arch)
        brow_w = max(1, round(s * (2.0 + 1.6 * p.brow_thickness)))
        brow_color = _mix(HAIR, SKIN, 0.7 * max(0.0, -p.brow_thickness))
        pts = [(ex - side * eye_rx * 1.1, brow_y + 1 * s), (ex, brow_y - arch), (ex + side * eye_rx * 1.2, brow_y + 1.5 * s)]
        draw.line(pts, fill=brow_color, width=brow_w)
        if p.synophrys > 0.4 and side == 1:
            draw.line([(cx - eye_dx + eye_rx * 1.1, brow_y + 1 * s), (cx + eye_dx - eye_rx * 1.1, brow_y + 1 * s)],
                      fill=brow_color, width=max(1, brow_w - 1))

    # Nose: bridge to tip.
    tip_y = eye_y + half_h * (0.36 + 0.11 * p.nose_length)  # below the eyes within PARAM_LIMIT
    nose_w = 5.5 * s * _scale(0.4 * p.nose_width, 0.15 * max(0.0, p.coarseness))
    bridge_top = eye_y + (2 - 5.0 * p.nasal_bridge) * s
    for side in (-1, 1):
        draw.line([(cx + side * 1.8 * s, bridge_top), (cx + side * nose_w * 0.8, tip_y - 2 * s)], fill=LINE, width=width)
    tip_r = 2.4 * s * _scale(0.7 * p.nose_tip)
    draw.arc([cx - tip_r, tip_y - tip_r, cx + tip_r, tip_y + tip_r], 10, 170, fill=LINE, width=width)
    nostril = 1.2 * s * _scale(1.2 * max(0.0, p.nares))
    for side in (-1, 1):
        nx = cx + side * nose_w * 0.6
        draw.ellipse([nx - nostril, tip_y - nostril * 0.6, nx + nostril, tip_y + nostril * 0.6],
                     fill=_mix(SKIN, LINE, 0.4 + 0.3 * max(0.0, p.nares)))

    # Philtrum: two ridges from the nose to the upper lip, faint when smooth.
    lip_y = tip_y + 6.5 * s * _scale(0.45 * p.philtrum_length)
    ridge = _mix(LINE, SKIN, 0.45 + 0.4 * max(-1.0, min(1.0, p.philtrum_smooth)))
    for side in (-1, 1):
        draw.line([(cx + side * 1.5 * s, tip_y + tip_r), (cx + side * 2.0 * s, lip_y - 1)], fill=ridge, width=max(1, round(s)))

    # Mouth: upper and lower lip polygons; corners turn down, the mouth may stay open.
    mouth_w = 11 * s * _scale(0.35 * p.mouth_width)
    upper = 2.2 * s * _scale(0.55 * p.upper_lip)
    lower = 2.8 * s * _scale(0.55 * p.lower_lip)
    corner_y = lip_y + 3.5 * s * p.mouth_corners
    gap = 3.0 * s * max(0.0, p.mouth_open)
    left, right = cx - mouth_w, cx + mouth_w
    draw.polygon([(left, corner_y), (cx - mouth_w * 0.35, lip_y - upper), (cx, lip_y - upper * 0.7),
                  (cx + mouth_w * 0.35, lip_y - upper), (right, corner_y), (cx, lip_y)], fill=LIPS)
    draw.polygon([(left, corner_y), (cx, lip_y + gap), (right, corner_y), (cx, lip_y + gap + lower)], fill=LIPS)
    if gap > 0.5:
        draw.polygon([(left + 2 * s, corner_y), (cx, lip_y), (right - 2 * s, corner_y), (cx, lip_y + gap)], fill=(90, 40, 40))
    draw.line([(left, corner_y), (cx, lip_y + gap * 0.5), (right, corner_y)], fill=LINE, width=max(1, round(s)))
    return image


def render_face(term_ids: Iterable[str], *, key: str, size: int = 128) -> Image.Image:
    """The synthetic face for a case with these facial terms; ``key`` seeds the per-case jitter."""
    params = face_params(term_ids, key=key)
    rng = random.Random(f"offset:{key}")
    offset = (rng.uniform(-1.0, 1.0), rng.uniform(-1.0, 1.0))
    return draw_face(params, size=size, offset=offset)


def save_face(path: str | Path, term_ids: Iterable[str], *, key: str, size: int = 128) -> Path:
    """Render and write a PNG atomically; returns ``path``."""
    path = Path(path)
    image = render_face(term_ids, key=key, size=size)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", compress_level=1)  # fast; these are tiny drawings
    return path
