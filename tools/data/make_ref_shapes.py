"""Ref-Shapes: a synthetic referring-video dataset in the Ref-YouTube-VOS layout, for the CPU quick start.

Each video shows 2–4 flat-coloured shapes (circle, square, triangle, diamond or cross; small or
large; one of six colours) that move in a straight line or stand still over a static textured
background (smooth noise, a gradient or stripes). Objects may overlap: the later one is drawn on
top and the masks show what is visible. Each expression names one object by the attributes that
single it out in its video — size, colour, shape, the side of the frame it keeps to and its
motion — e.g. "the small red triangle moving right" or "the circle on the left" (without its
shape an object is "the … object"). One video in ten holds a pair of identical-looking objects
that cross each other in opposite directions: only their motion tells them apart.

Most expressions can be resolved from any single frame, some only from the motion: about 15 % of
them (the twins', and those whose other words fit several objects). Motion is kept a minority on
purpose: ReferFormer with a 2-D backbone (ResNet, Swin) decodes every frame on its own and cannot
see motion, so those expressions are a coin toss for the quick-start model (a Video-Swin backbone
sees it). ``TWIN_PROBABILITY`` and ``MOTION_WEIGHT`` set the share.

Attributes, as the expressions use them:

* size ``small`` / ``large``, colour, shape: fixed per object;
* side ``left`` / ``right`` (``top`` / ``bottom``): in **every** frame the object's centre lies left
  of (above) every other object's centre by at least ``SIDE_MARGIN`` of the frame width (height);
* motion ``left`` / ``right`` / ``up`` / ``down`` (constant velocity) or ``still``.

An expression is a set of at most ``MAX_DESCRIPTION_ATTRIBUTES`` attributes that exactly one object
of the video has; shorter descriptions, and those naming the shape, are drawn more often. "left"
and "right" appear only as whole words, so a horizontal flip of the clip together with the
left/right word swap of the training transforms keeps every expression true.

Layout written under ``--output`` (Ref-YouTube-VOS's)::

    train/JPEGImages/<video>/<frame>.jpg     frames 00000, 00005, … (Ref-YouTube-VOS numbering)
    train/Annotations/<video>/<frame>.png    palette PNG, pixel = object id 1..n, 0 = background
    train/meta.json                          per object: category (its shape) and the frames it is visible in
    valid/…                                  the same for the validation videos
    meta_expressions/train/meta_expressions.json              expressions with ``obj_id``
    meta_expressions/valid/meta_expressions.json              without ``obj_id`` (competition format)
    meta_expressions/valid/meta_expressions_with_gt.json      the same with ``obj_id`` and ``needs_motion``:
                                                              the local ground truth
    davis_valid/                             the validation ground truth as a DAVIS-2017 folder: one
                                             sequence ``<video>/<exp_id>`` per expression whose object 1
                                             is the referred object (``Annotations_unsupervised/480p/…``,
                                             ``ImageSets/2017/val.txt``), for
                                             ``eval_davis.py --davis_path <output>/davis_valid``

The Ref-YouTube-VOS inference output ``<out>/valid/<video>/<exp_id>/<frame>.png`` has the same
sequence names, so that folder is a DAVIS results folder once its 0/255 masks are turned into 0/1
label maps.

``--layout mevis`` writes the same kind of videos in the MeViS layout instead, for
``--dataset_file mevis`` and ``eval_mevis.py``: splits ``train``, ``valid_u`` (with masks, scored
offline) and ``valid`` (without, zipped for a server), frames numbered ``00000``, ``00001``, …, and
besides the single-object expressions above up to ``GROUP_EXPRESSIONS_PER_VIDEO`` per video that
refer to several objects at once, e.g. "the two red shapes", "the shapes moving left" or "the small
squares standing still" (size, colour, shape and motion that at least two objects share; sides
single out one object only, so they are left out)::

    <split>/JPEGImages/<video>/<frame>.jpg
    <split>/meta_expressions.json    {"videos": {video: {"expressions": {exp_id: {"exp", "obj_id": [...],
                                      "anno_id": [...]}}, "frames": [...]}}}; valid: only "exp"
    <split>/mask_dict.json           train and valid_u: {anno_id: [COCO RLE of the object's visible pixels,
                                      or null where it is hidden, per frame]}

``obj_id`` counts a video's objects from 0 and ``anno_id`` a split's objects from 0, as in MeViS.
The train videos are those of the Ref-YouTube-VOS layout with the same seed (plus the group
expressions), the valid ones too; the valid_u videos are drawn from a stream of their own.

Same ``--seed`` → byte-identical files. Every video draws from its own random stream, seeded by
(seed, split, video index), so changing the number of videos of one split leaves the other
split's videos, and the first videos of the same split, unchanged.

    python tools/data/make_ref_shapes.py --output data/ref-shapes --seed 0
    python tools/data/make_ref_shapes.py --layout mevis --output data/ref-shapes-mevis --seed 0
"""
from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from datasets.categories import REF_SHAPES_CATEGORIES  # noqa: E402
from datasets.mevis import MASK_DICT_FILE  # noqa: E402
from datasets.meta import (  # noqa: E402
    ANNOTATION_SUFFIX,
    ANNOTATIONS_DIR,
    FRAME_SUFFIX,
    FRAMES_DIR,
    META_EXPRESSIONS_DIR,
    META_EXPRESSIONS_FILE,
    META_FILE,
)
from models.postprocessors import encode_rle  # noqa: E402
from util.visualize import davis_palette, palette_image  # noqa: E402

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# Vocabulary of the scenes
# ---------------------------------------------------------------------------------------------
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 175, 60),
    "blue": (40, 90, 230),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 200),
    "cyan": (40, 205, 220),
}
COLOUR_JITTER = 12
"""Per-object RGB offset (± this, per channel): the same colour name is not one exact RGB value."""

SHAPES = REF_SHAPES_CATEGORIES
"""The shapes are the dataset's categories (``--dataset_file ref_shapes`` reads the same table)."""
CIRCLE_SEGMENTS = 48
# Polygons around the centre, in units of the object's radius (x right, y down). The scales give
# every shape about the same area (≈ 2.2 r²), so the size words, not the shape, carry the size.
CIRCLE_RADIUS = 0.85
SQUARE_HALF_SIDE = 0.75
TRIANGLE_CIRCUMRADIUS = 1.3
DIAMOND_HALF_DIAGONAL = 1.05
CROSS_HALF_LENGTH, CROSS_HALF_WIDTH = 1.0, 0.36
SUBPIXEL_BITS = 4
"""``cv2.fillPoly`` takes vertices in fixed point with this many fractional bits."""
SHAPE_EXTENT = 1.3
"""Largest distance of a shape's pixels from its centre, in radii: keeps every shape inside the frame."""

SIZES: dict[str, float] = {"small": 0.08, "large": 0.15}
"""Radius of each size class as a fraction of min(height, width)."""
RADIUS_JITTER = 0.1
"""Radii vary by ± this fraction within a size class; the classes never overlap."""

MOTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1), "still": (0, 0)}
"""Motion name → unit direction (x, y) in image coordinates."""
TRAVEL_RANGE = (0.2, 0.4)
"""A moving object travels this fraction of the frame width (height) over the video."""
BORDER = 1
"""Pixels kept free between every shape and the frame edge."""

SIDES = {"horizontal": ("left", "right"), "vertical": ("top", "bottom")}
SIDE_MARGIN = 0.06
"""An object keeps to a side when its centre is this fraction of the frame beyond all others, in every frame."""

OBJECTS_PER_VIDEO = (2, 4)
TWIN_PROBABILITY = 0.1
"""Share of videos with two identical-looking objects crossing in opposite directions (only motion separates them)."""
TWIN_OFFSET_RANGE = (0.5, 1.0)
"""Twins pass each other this many ``SIDE_MARGIN`` apart, so no side separates them: only motion does."""

MIN_VISIBLE_FRACTION = 0.3
"""An object counts as visible in a frame when at least this share of its area is not occluded."""
MIN_VISIBLE_FRAMES = 0.8
"""Every object is visible in the first frame and in at least this share of the frames (DAVIS counts
the objects of the first frame)."""
MAX_SCENE_ATTEMPTS = 1000

# ---------------------------------------------------------------------------------------------
# Backgrounds
# ---------------------------------------------------------------------------------------------
BACKGROUNDS = ("noise", "gradient", "stripes")
BACKGROUND_GREY_RANGE = (60.0, 180.0)
BACKGROUND_TINT = 20.0
"""Background colours are greys tinted by at most this per channel: muted next to the objects."""
NOISE_CELL = 8
"""Smooth-noise backgrounds interpolate one random value per this many pixels."""
STRIPE_PERIOD_RANGE = (8.0, 24.0)

# ---------------------------------------------------------------------------------------------
# Expressions
# ---------------------------------------------------------------------------------------------
ATTRIBUTES = ("size", "colour", "shape", "horizontal", "vertical", "motion")
"""In the order their words appear: "the small red triangle on the left at the top moving right"."""
MAX_DESCRIPTION_ATTRIBUTES = 3
DESCRIPTION_DECAY = 0.5
"""A description with one more attribute is drawn this many times as often."""
SHAPE_NOUN_WEIGHT = 2.0
"""A description naming the shape is drawn this many times as often, as people name the category."""
MOTION_WEIGHT = 0.3
"""A description naming the motion is drawn this many times as often (below 1: less often)."""
NOUN_WITHOUT_SHAPE = "object"
SIDE_PHRASES = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom"}
GROUP_ATTRIBUTES = ("size", "colour", "shape", "motion")
"""What several objects can share in a group expression (a side singles out one object)."""
GROUP_EXPRESSIONS_PER_VIDEO = 2
"""MeViS layout: at most this many expressions per video refer to several objects."""
COUNT_WORDS = {2: "two", 3: "three", 4: "four"}
COUNT_WORD_PROBABILITY = 0.5
"""Share of group expressions that say how many objects they refer to ("the two red shapes")."""
PLURAL_SHAPES = {"circle": "circles", "square": "squares", "triangle": "triangles", "diamond": "diamonds",
                 "cross": "crosses"}
PLURAL_NOUN_WITHOUT_SHAPE = "shapes"
MOTION_PHRASES = {
    "left": "moving left", "right": "moving right", "up": "moving up", "down": "moving down", "still": "standing still",
}

# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------
SPLITS = ("train", "valid")
SPLIT_SEED = {"train": 0, "valid": 1, "valid_u": 2}
FRAME_NAME_STEP = 5
"""Ref-YouTube-VOS names frames 00000, 00005, …: every fifth frame of the original 30 fps video."""
JPEG_QUALITY = 95
GROUND_TRUTH_FILE = "meta_expressions_with_gt.json"
NEEDS_MOTION_KEY = "needs_motion"
"""Ground-truth entry: whether only the motion resolves the expression (``eval_ref_shapes.py`` scores both kinds)."""
DAVIS_DIR = "davis_valid"
DAVIS_ANNOTATIONS = ("Annotations_unsupervised", "480p")
DAVIS_SEQUENCE_LIST = ("ImageSets", "2017", "val.txt")
REFERRED_LABEL = 1
"""In ``davis_valid`` the referred object is object 1 of its sequence."""
LAYOUTS = ("ytvos", "mevis")
MEVIS_SPLITS = ("train", "valid_u", "valid")
MEVIS_SPLITS_WITH_MASKS = ("train", "valid_u")
MEVIS_FRAME_NAME_STEP = 1
"""MeViS names frames 00000, 00001, …"""

DATASET_VERSION = 2
"""Raised whenever the same flags start producing different files (2: motion a minority, ``needs_motion``)."""

DEFAULT_OUTPUT = "data/ref-shapes"
DEFAULT_MEVIS_OUTPUT = "data/ref-shapes-mevis"
DEFAULT_TRAIN_VIDEOS = 200
DEFAULT_VALID_VIDEOS = 24
DEFAULT_FRAMES = 10
DEFAULT_SIZE = 128
DEFAULT_EXPRESSIONS_PER_OBJECT = 2


@dataclass
class ShapeObject:
    """One object of a scene.

    Attributes:
        obj_id: its label in the annotations (1..n, also the drawing order: higher ids on top).
        shape, colour, size, motion: its names from ``SHAPES``, ``COLOURS``, ``SIZES``, ``MOTIONS``.
        rgb: the colour it is drawn with.
        radius: pixels.
        centres: float ``[T, 2]`` centre ``(x, y)`` in pixels in each frame.
        horizontal, vertical: the side it keeps to (``SIDES``), or ``None``.
    """

    obj_id: int
    shape: str
    colour: str
    size: str
    motion: str
    rgb: tuple[int, int, int]
    radius: float
    centres: np.ndarray
    horizontal: str | None = None
    vertical: str | None = None

    def attribute(self, name: str) -> str | None:
        """The value of one of ``ATTRIBUTES``."""
        return getattr(self, name)


@dataclass
class ReferringExpression:
    """An expression: its text, the object it refers to, and the attributes it names."""

    text: str
    obj_id: int
    attributes: tuple[str, ...]


@dataclass
class GroupExpression:
    """An expression of the MeViS layout: its text, the objects it refers to (one or more), and the
    attributes it names."""

    text: str
    obj_ids: tuple[int, ...]
    attributes: tuple[str, ...]


@dataclass
class VideoScene:
    """A generated video before it is written.

    Attributes:
        name: video folder name.
        background: uint8 ``[H, W, 3]`` RGB.
        objects: in drawing order (``objects[i].obj_id == i + 1``).
        expressions: in expression-id order.
        labels: uint8 ``[T, H, W]`` visible object id per pixel (0 = background).
        has_twins: whether two objects look identical and only their motion separates them.
    """

    name: str
    background: np.ndarray
    objects: list[ShapeObject]
    labels: np.ndarray
    has_twins: bool
    expressions: list[ReferringExpression] = field(default_factory=list)
    frame_name_step: int = FRAME_NAME_STEP

    @property
    def frame_names(self) -> list[str]:
        """Frame stems ``00000``, ``00005``, … (``00000``, ``00001``, … in the MeViS layout)."""
        return [f"{t * self.frame_name_step:05d}" for t in range(len(self.labels))]

    def frames(self) -> np.ndarray:
        """uint8 ``[T, H, W, 3]`` RGB frames: the background with each visible object in its colour."""
        colours = np.zeros((len(self.objects) + 1, 3), dtype=np.uint8)  # [1 + n, 3], row = label
        for obj in self.objects:
            colours[obj.obj_id] = obj.rgb
        frames = np.repeat(self.background[None], len(self.labels), axis=0)  # [T, H, W, 3]
        foreground = self.labels > 0
        frames[foreground] = colours[self.labels[foreground]]
        return frames


@dataclass
class SplitStatistics:
    """Counts of one written split."""

    videos: int = 0
    frames: int = 0
    objects: int = 0
    expressions: int = 0
    twin_videos: int = 0
    motion_expressions: int = 0
    """Expressions that name the motion."""
    motion_needed_expressions: int = 0
    """Expressions that only their motion resolves (:func:`needs_motion`)."""
    group_expressions: int = 0
    """MeViS layout: expressions that refer to several objects."""


# ---------------------------------------------------------------------------------------------
# Scenes
# ---------------------------------------------------------------------------------------------


def shape_polygon(shape: str, centre: np.ndarray, radius: float) -> np.ndarray:
    """Vertices ``[V, 2]`` (x, y) in pixels of ``shape`` centred at ``centre``."""
    if shape == "circle":
        angles = np.linspace(0.0, 2.0 * np.pi, CIRCLE_SEGMENTS, endpoint=False)
        unit = CIRCLE_RADIUS * np.stack([np.cos(angles), np.sin(angles)], axis=1)  # [V, 2]
    elif shape == "square":
        s = SQUARE_HALF_SIDE
        unit = np.array([[-s, -s], [s, -s], [s, s], [-s, s]])
    elif shape == "triangle":
        angles = np.deg2rad([-90.0, 30.0, 150.0])  # pointing up
        unit = TRIANGLE_CIRCUMRADIUS * np.stack([np.cos(angles), np.sin(angles)], axis=1)  # [3, 2]
    elif shape == "diamond":
        d = DIAMOND_HALF_DIAGONAL
        unit = np.array([[0.0, -d], [d, 0.0], [0.0, d], [-d, 0.0]])
    elif shape == "cross":
        a, w = CROSS_HALF_LENGTH, CROSS_HALF_WIDTH
        unit = np.array([[-w, -a], [w, -a], [w, -w], [a, -w], [a, w], [w, w],
                         [w, a], [-w, a], [-w, w], [-a, w], [-a, -w], [-w, -w]])
    else:
        raise ValueError(f"unknown shape {shape!r}; choose one of {SHAPES}")
    return centre + radius * unit


def shape_mask(shape: str, centre: np.ndarray, radius: float, height: int, width: int) -> np.ndarray:
    """bool ``[H, W]``: the pixels covered by the shape (no anti-aliasing, so frames and masks agree)."""
    points = np.round(shape_polygon(shape, centre, radius) * (1 << SUBPIXEL_BITS)).astype(np.int32)
    mask = np.zeros((height, width), dtype=np.uint8)
    cv2.fillPoly(mask, [points], 1, lineType=cv2.LINE_8, shift=SUBPIXEL_BITS)
    return mask.astype(bool)


def make_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """uint8 ``[H, W, 3]``: two muted colours mixed by smooth noise, a linear gradient or stripes."""
    low, high = (rng.uniform(*BACKGROUND_GREY_RANGE) + rng.uniform(-BACKGROUND_TINT, BACKGROUND_TINT, 3)
                 for _ in range(2))
    kind = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)  # [H, W] each
    angle = rng.uniform(0.0, np.pi)
    along = xs * np.cos(angle) + ys * np.sin(angle)  # [H, W] distance along the pattern's direction
    if kind == "noise":
        cells = rng.random((height // NOISE_CELL + 2, width // NOISE_CELL + 2))
        mix = np.clip(cv2.resize(cells, (width, height), interpolation=cv2.INTER_CUBIC), 0.0, 1.0)
    elif kind == "gradient":
        mix = (along - along.min()) / max(along.max() - along.min(), 1e-6)
    else:
        period = rng.uniform(*STRIPE_PERIOD_RANGE)
        mix = (np.sin(2.0 * np.pi * along / period) > 0).astype(np.float64)
    image = low + mix[..., None] * (high - low)  # [H, W, 3]
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def _object_rgb(rng: np.random.Generator, colour: str) -> tuple[int, int, int]:
    jittered = np.array(COLOURS[colour]) + rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, 3)
    return tuple(int(c) for c in np.clip(jittered, 0, 255))


def _radius(rng: np.random.Generator, size: str, height: int, width: int) -> float:
    return SIZES[size] * min(height, width) * rng.uniform(1.0 - RADIUS_JITTER, 1.0 + RADIUS_JITTER)


def _trajectory(start: np.ndarray, motion: str, travel: float, num_frames: int) -> np.ndarray:
    """Centres ``[T, 2]`` moving ``travel`` pixels in direction ``motion`` at constant speed."""
    steps = np.linspace(0.0, 1.0, num_frames)[:, None]  # [T, 1]
    return start + steps * travel * np.array(MOTIONS[motion], dtype=np.float64)


def _place_object(rng: np.random.Generator, radius: float, motion: str, height: int, width: int,
                  num_frames: int) -> np.ndarray:
    """Centres ``[T, 2]`` of an object that stays inside the frame for the whole video."""
    frame_size = np.array([width, height], dtype=np.float64)
    direction = np.array(MOTIONS[motion], dtype=np.float64)
    travel = rng.uniform(*TRAVEL_RANGE) * float(np.abs(direction) @ frame_size)
    low = SHAPE_EXTENT * radius + BORDER
    high = frame_size - low
    shift = travel * direction  # [2] displacement over the video
    start = rng.uniform(low - np.minimum(shift, 0.0), high - np.maximum(shift, 0.0))  # [2]
    return _trajectory(start, motion, travel, num_frames)


def _place_twins(rng: np.random.Generator, radius: float, height: int, width: int,
                 num_frames: int) -> tuple[tuple[str, np.ndarray], tuple[str, np.ndarray]]:
    """Motions and centres ``[T, 2]`` of two objects that swap places along one axis, passing close by."""
    axis = int(rng.integers(2))  # 0: horizontal motion, 1: vertical
    forward, backward = ("right", "left") if axis == 0 else ("down", "up")
    frame_size = np.array([width, height], dtype=np.float64)
    travel = rng.uniform(*TRAVEL_RANGE) * frame_size[axis]
    offset = rng.uniform(*TWIN_OFFSET_RANGE) * SIDE_MARGIN * frame_size[1 - axis]
    low = SHAPE_EXTENT * radius + BORDER
    high = frame_size - low
    start = np.empty(2)
    start[axis] = rng.uniform(low, high[axis] - travel)
    start[1 - axis] = rng.uniform(low, high[1 - axis] - offset)
    other = start.copy()
    other[axis] += travel
    other[1 - axis] += offset
    return ((forward, _trajectory(start, forward, travel, num_frames)),
            (backward, _trajectory(other, backward, travel, num_frames)))


def _sides(objects: list[ShapeObject], width: int, height: int) -> None:
    """Set ``horizontal`` / ``vertical`` of each object that keeps to a side in every frame."""
    for axis, (name, (before, after)) in enumerate(SIDES.items()):
        margin = SIDE_MARGIN * (width, height)[axis]
        coords = np.stack([obj.centres[:, axis] for obj in objects])  # [n, T]
        for i, obj in enumerate(objects):
            others = np.delete(coords, i, axis=0)  # [n - 1, T]
            if np.all(coords[i] + margin < others):
                setattr(obj, name, before)
            elif np.all(coords[i] - margin > others):
                setattr(obj, name, after)


def rasterize(objects: list[ShapeObject], height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Visible labels and unoccluded areas.

    Returns:
        labels: uint8 ``[T, H, W]``, the id of the topmost object at each pixel (0 = background);
        areas: int ``[n, T]``, each object's pixel count if nothing covered it.
    """
    num_frames = len(objects[0].centres)
    labels = np.zeros((num_frames, height, width), dtype=np.uint8)
    areas = np.zeros((len(objects), num_frames), dtype=np.int64)
    for t in range(num_frames):
        for i, obj in enumerate(objects):
            mask = shape_mask(obj.shape, obj.centres[t], obj.radius, height, width)
            labels[t][mask] = obj.obj_id
            areas[i, t] = mask.sum()
    return labels, areas


def _well_visible(objects: list[ShapeObject], labels: np.ndarray, areas: np.ndarray) -> bool:
    for i, obj in enumerate(objects):
        visible = (labels == obj.obj_id).sum(axis=(1, 2)) >= MIN_VISIBLE_FRACTION * areas[i]  # [T]
        if not visible[0] or visible.mean() < MIN_VISIBLE_FRAMES:
            return False
    return True


def _sample_appearance(rng: np.random.Generator, height: int, width: int) -> dict:
    """Shape, colour and size names, the drawn RGB and the radius in pixels of a new object."""
    shape = SHAPES[rng.integers(len(SHAPES))]
    colour = list(COLOURS)[rng.integers(len(COLOURS))]
    size = list(SIZES)[rng.integers(len(SIZES))]
    return dict(shape=shape, colour=colour, size=size, rgb=_object_rgb(rng, colour),
                radius=_radius(rng, size, height, width))


def _sample_objects(rng: np.random.Generator, height: int, width: int, num_frames: int,
                    with_twins: bool) -> list[ShapeObject]:
    """2–4 objects (two of them look-alike twins if ``with_twins``), ids assigned in a random drawing order."""
    low, high = OBJECTS_PER_VIDEO
    num_objects = int(rng.integers(low, high + 1))
    specs = []  # keyword arguments of ShapeObject, without obj_id
    if with_twins:
        look = _sample_appearance(rng, height, width)
        for motion, centres in _place_twins(rng, look["radius"], height, width, num_frames):
            specs.append(dict(look, motion=motion, centres=centres))
    while len(specs) < num_objects:
        look = _sample_appearance(rng, height, width)
        motion = list(MOTIONS)[rng.integers(len(MOTIONS))]
        centres = _place_object(rng, look["radius"], motion, height, width, num_frames)
        specs.append(dict(look, motion=motion, centres=centres))
    order = rng.permutation(len(specs))  # so that the twins are not always objects 1 and 2
    return [ShapeObject(obj_id=k + 1, **specs[i]) for k, i in enumerate(order)]


# ---------------------------------------------------------------------------------------------
# Expressions
# ---------------------------------------------------------------------------------------------


def matching_objects(objects: list[ShapeObject], values: dict[str, str]) -> list[int]:
    """Ids of the objects whose attributes have all the given ``values``."""
    return [obj.obj_id for obj in objects if all(obj.attribute(name) == value for name, value in values.items())]


def unique_descriptions(objects: list[ShapeObject], obj: ShapeObject) -> list[tuple[str, ...]]:
    """Attribute sets (at most ``MAX_DESCRIPTION_ATTRIBUTES``, in ``ATTRIBUTES`` order) that ``obj`` alone has."""
    defined = [name for name in ATTRIBUTES if obj.attribute(name) is not None]
    descriptions = []
    for count in range(1, MAX_DESCRIPTION_ATTRIBUTES + 1):
        for names in itertools.combinations(defined, count):
            if matching_objects(objects, {name: obj.attribute(name) for name in names}) == [obj.obj_id]:
                descriptions.append(names)
    return descriptions


def expression_text(obj: ShapeObject, attributes: tuple[str, ...]) -> str:
    """The words for ``attributes`` of ``obj``, e.g. "the small red triangle on the left moving right"."""
    words = ["the"]
    words += [obj.attribute(name) for name in ("size", "colour") if name in attributes]
    words.append(obj.shape if "shape" in attributes else NOUN_WITHOUT_SHAPE)
    words += [SIDE_PHRASES[obj.attribute(name)] for name in SIDES if name in attributes]
    if "motion" in attributes:
        words.append(MOTION_PHRASES[obj.motion])
    return " ".join(words)


def describe(rng: np.random.Generator, objects: list[ShapeObject],
             per_object: int) -> list[ReferringExpression] | None:
    """Up to ``per_object`` distinct expressions for each object, or ``None`` if some object has none."""
    expressions = []
    for obj in objects:
        candidates = unique_descriptions(objects, obj)
        if not candidates:
            return None
        weights = np.array([DESCRIPTION_DECAY ** (len(c) - 1) * (SHAPE_NOUN_WEIGHT if "shape" in c else 1.0)
                            * (MOTION_WEIGHT if "motion" in c else 1.0)
                            for c in candidates])
        chosen = rng.choice(len(candidates), size=min(per_object, len(candidates)), replace=False,
                            p=weights / weights.sum())
        for index in chosen:
            attributes = candidates[index]
            expressions.append(ReferringExpression(expression_text(obj, attributes), obj.obj_id, attributes))
    return expressions


def needs_motion(objects: list[ShapeObject], expression: ReferringExpression) -> bool:
    """Whether only the motion resolves ``expression``: it names the motion, and its other words fit
    more than one object. A model that looks at one frame at a time cannot resolve it."""
    if "motion" not in expression.attributes:
        return False
    obj = objects[expression.obj_id - 1]
    others = {name: obj.attribute(name) for name in expression.attributes if name != "motion"}
    return matching_objects(objects, others) != [obj.obj_id]


def group_descriptions(objects: list[ShapeObject]) -> list[tuple[dict[str, str], list[int]]]:
    """Descriptions that fit two objects or more: ``(values, ids)`` for every set of at most
    ``MAX_DESCRIPTION_ATTRIBUTES`` of ``GROUP_ATTRIBUTES`` (``ATTRIBUTES`` order) with the values some object
    has, once each, and the ids of the objects that have them."""
    descriptions, seen = [], set()
    for count in range(1, MAX_DESCRIPTION_ATTRIBUTES + 1):
        for names in itertools.combinations(GROUP_ATTRIBUTES, count):
            for obj in objects:
                values = {name: obj.attribute(name) for name in names}
                key = tuple(values.items())
                if key in seen:
                    continue
                seen.add(key)
                ids = matching_objects(objects, values)
                if len(ids) > 1:
                    descriptions.append((values, ids))
    return descriptions


def group_text(values: dict[str, str], count: int | None) -> str:
    """The words for a group, e.g. "the two small red squares moving left"; ``count`` adds the number word."""
    words = ["the"]
    if count is not None:
        words.append(COUNT_WORDS[count])
    words += [values[name] for name in ("size", "colour") if name in values]
    words.append(PLURAL_SHAPES[values["shape"]] if "shape" in values else PLURAL_NOUN_WITHOUT_SHAPE)
    if "motion" in values:
        words.append(MOTION_PHRASES[values["motion"]])
    return " ".join(words)


def describe_groups(rng: np.random.Generator, objects: list[ShapeObject], count: int) -> list[GroupExpression]:
    """Up to ``count`` distinct expressions that each refer to several objects (none if no two objects share
    an attribute), drawn with the weights of :func:`describe`."""
    candidates = group_descriptions(objects)
    if not candidates:
        return []
    weights = np.array([DESCRIPTION_DECAY ** (len(values) - 1) * (SHAPE_NOUN_WEIGHT if "shape" in values else 1.0)
                        * (MOTION_WEIGHT if "motion" in values else 1.0)
                        for values, _ in candidates])
    chosen = rng.choice(len(candidates), size=min(count, len(candidates)), replace=False, p=weights / weights.sum())
    expressions = []
    for index in chosen:
        values, ids = candidates[index]
        number = len(ids) if rng.random() < COUNT_WORD_PROBABILITY else None
        expressions.append(GroupExpression(group_text(values, number), tuple(ids), tuple(values)))
    return expressions


def group_needs_motion(objects: list[ShapeObject], expression: GroupExpression) -> bool:
    """:func:`needs_motion` for an expression of several objects: it names the motion, and its other
    words fit other objects too."""
    if "motion" not in expression.attributes:
        return False
    first = objects[expression.obj_ids[0] - 1]
    others = {name: first.attribute(name) for name in expression.attributes if name != "motion"}
    return matching_objects(objects, others) != list(expression.obj_ids)


def make_scene(rng: np.random.Generator, name: str, *, height: int, width: int, num_frames: int,
               expressions_per_object: int) -> VideoScene:
    """A video whose objects are all well visible and can each be described uniquely.

    Raises:
        RuntimeError: if no such scene was found in ``MAX_SCENE_ATTEMPTS`` tries (frames too small).
    """
    background = make_background(rng, height, width)
    with_twins = bool(rng.random() < TWIN_PROBABILITY)
    for _ in range(MAX_SCENE_ATTEMPTS):
        objects = _sample_objects(rng, height, width, num_frames, with_twins)
        _sides(objects, width, height)
        labels, areas = rasterize(objects, height, width)
        if not _well_visible(objects, labels, areas):
            continue
        expressions = describe(rng, objects, expressions_per_object)
        if expressions is not None:
            return VideoScene(name, background, objects, labels, with_twins, expressions)
    raise RuntimeError(
        f"video {name}: no scene with every object visible and describable after {MAX_SCENE_ATTEMPTS} tries; "
        f"{height}x{width} frames are too small, use larger --height/--width"
    )


def video_name(split: str, index: int) -> str:
    """``<split>_<index:04d>``."""
    return f"{split}_{index:04d}"


def generate_split(seed: int, split: str, num_videos: int, *, height: int, width: int, num_frames: int,
                   expressions_per_object: int) -> list[VideoScene]:
    """The scenes of one split; video ``i`` depends only on (seed, split, i) and the sizes."""
    if split not in SPLIT_SEED:
        raise ValueError(f"unknown split {split!r}; choose one of {tuple(SPLIT_SEED)}")
    return [
        make_scene(np.random.default_rng([seed, SPLIT_SEED[split], index]), video_name(split, index),
                   height=height, width=width, num_frames=num_frames, expressions_per_object=expressions_per_object)
        for index in range(num_videos)
    ]


def generate_mevis_split(seed: int, split: str, num_videos: int, *, height: int, width: int, num_frames: int,
                         expressions_per_object: int) -> list[tuple[VideoScene, list[GroupExpression]]]:
    """The scenes of one split of the MeViS layout with their expressions: the single-object ones of
    :func:`generate_split` (the same scenes), then those of several objects, drawn from the rest of
    each video's stream."""
    if split not in SPLIT_SEED:
        raise ValueError(f"unknown split {split!r}; choose one of {MEVIS_SPLITS}")
    videos = []
    for index in range(num_videos):
        rng = np.random.default_rng([seed, SPLIT_SEED[split], index])
        scene = make_scene(rng, video_name(split, index), height=height, width=width, num_frames=num_frames,
                           expressions_per_object=expressions_per_object)
        scene.frame_name_step = MEVIS_FRAME_NAME_STEP
        singles = [GroupExpression(e.text, (e.obj_id,), e.attributes) for e in scene.expressions]
        videos.append((scene, singles + describe_groups(rng, scene.objects, GROUP_EXPRESSIONS_PER_VIDEO)))
    return videos


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
        f.write("\n")


def write_frames(scene: VideoScene, split_dir: Path) -> None:
    """``JPEGImages/<video>/<frame>.jpg``."""
    frames_dir = split_dir / FRAMES_DIR / scene.name
    frames_dir.mkdir(parents=True, exist_ok=True)
    for stem, frame in zip(scene.frame_names, scene.frames()):
        Image.fromarray(frame).save(frames_dir / f"{stem}{FRAME_SUFFIX}", quality=JPEG_QUALITY)


def write_video(scene: VideoScene, split_dir: Path, palette: np.ndarray) -> None:
    """``JPEGImages/<video>/<frame>.jpg`` and palette ``Annotations/<video>/<frame>.png``."""
    write_frames(scene, split_dir)
    annotations_dir = split_dir / ANNOTATIONS_DIR / scene.name
    annotations_dir.mkdir(parents=True, exist_ok=True)
    for stem, labels in zip(scene.frame_names, scene.labels):
        palette_image(labels, palette).save(annotations_dir / f"{stem}{ANNOTATION_SUFFIX}")


def meta_entry(scene: VideoScene) -> dict:
    """The video's ``meta.json`` entry: each object's category (shape) and the frames it is visible in."""
    visible = (scene.labels[None] == np.array([o.obj_id for o in scene.objects])[:, None, None, None]).any(axis=(2, 3))
    return {"objects": {
        str(obj.obj_id): {"category": obj.shape,
                          "frames": [stem for stem, seen in zip(scene.frame_names, visible[i]) if seen]}
        for i, obj in enumerate(scene.objects)
    }}


def expressions_entry(scene: VideoScene, with_obj_id: bool, ground_truth: bool = False) -> dict:
    """The video's ``meta_expressions.json`` entry; expression ids are ``"0"``, ``"1"``, …

    ``ground_truth`` adds ``obj_id`` and :data:`NEEDS_MOTION_KEY` (the local ground-truth file).
    """
    expressions = {}
    for exp_id, expression in enumerate(scene.expressions):
        entry = {"exp": expression.text}
        if with_obj_id or ground_truth:
            entry["obj_id"] = str(expression.obj_id)
        if ground_truth:
            entry[NEEDS_MOTION_KEY] = needs_motion(scene.objects, expression)
        expressions[str(exp_id)] = entry
    return {"expressions": expressions, "frames": scene.frame_names}


def write_davis_ground_truth(scenes: list[VideoScene], davis_dir: Path, palette: np.ndarray) -> None:
    """One DAVIS-2017 sequence ``<video>/<exp_id>`` per expression, the referred object labelled 1."""
    sequences = []
    for scene in scenes:
        for exp_id, expression in enumerate(scene.expressions):
            sequence = f"{scene.name}/{exp_id}"
            folder = davis_dir.joinpath(*DAVIS_ANNOTATIONS, sequence)
            folder.mkdir(parents=True, exist_ok=True)
            for stem, labels in zip(scene.frame_names, scene.labels):
                referred = np.where(labels == expression.obj_id, REFERRED_LABEL, 0).astype(np.uint8)
                palette_image(referred, palette).save(folder / f"{stem}{ANNOTATION_SUFFIX}")
            sequences.append(sequence)
    sequence_list = davis_dir.joinpath(*DAVIS_SEQUENCE_LIST)
    sequence_list.parent.mkdir(parents=True, exist_ok=True)
    sequence_list.write_text("".join(f"{s}\n" for s in sequences), encoding="utf-8")


def split_statistics(scenes: list[VideoScene]) -> SplitStatistics:
    """Counts of videos, frames, objects and expressions of a split."""
    stats = SplitStatistics(videos=len(scenes))
    for scene in scenes:
        stats.frames += len(scene.labels)
        stats.objects += len(scene.objects)
        stats.expressions += len(scene.expressions)
        stats.twin_videos += scene.has_twins
        stats.motion_expressions += sum("motion" in e.attributes for e in scene.expressions)
        stats.motion_needed_expressions += sum(needs_motion(scene.objects, e) for e in scene.expressions)
    return stats


def _split_frames(split: str, num_frames: int, train_frames: int | None) -> int:
    """Frames per video of ``split``: ``train_frames`` for the training split when given, else ``num_frames``."""
    return train_frames if split == "train" and train_frames is not None else num_frames


def write_dataset(output: str | Path, *, seed: int, num_train_videos: int, num_valid_videos: int, num_frames: int,
                  height: int, width: int, expressions_per_object: int,
                  train_frames: int | None = None) -> dict[str, SplitStatistics]:
    """Generate and write both splits (see the module docstring for the layout); the training videos have
    ``train_frames`` frames (default ``num_frames``).

    Returns:
        split name → its statistics.
    """
    output = Path(output)
    palette = davis_palette()
    statistics = {}
    for split, num_videos in zip(SPLITS, (num_train_videos, num_valid_videos)):
        scenes = generate_split(seed, split, num_videos, height=height, width=width,
                                num_frames=_split_frames(split, num_frames, train_frames),
                                expressions_per_object=expressions_per_object)
        for scene in scenes:
            write_video(scene, output / split, palette)
        _write_json(output / split / META_FILE, {"videos": {s.name: meta_entry(s) for s in scenes}})
        expressions_dir = output / META_EXPRESSIONS_DIR / split
        has_obj_id = split == "train"
        _write_json(expressions_dir / META_EXPRESSIONS_FILE,
                    {"videos": {s.name: expressions_entry(s, has_obj_id) for s in scenes}})
        if split == "valid":
            _write_json(expressions_dir / GROUND_TRUTH_FILE,
                        {"videos": {s.name: expressions_entry(s, True, ground_truth=True) for s in scenes}})
            write_davis_ground_truth(scenes, output / DAVIS_DIR, palette)
        statistics[split] = split_statistics(scenes)
    return statistics


def mevis_masks(scene: VideoScene, first_anno_id: int) -> dict[str, list[dict | None]]:
    """``mask_dict.json`` entries of the scene's objects: anno_id ``first_anno_id + obj_id - 1`` → the COCO RLE
    of the object's visible pixels in each frame, ``None`` where it is hidden."""
    entries = {}
    for obj in scene.objects:
        visible = scene.labels == obj.obj_id  # [T, H, W]
        rles = encode_rle(torch.from_numpy(visible)[:, None])  # [T, 1, H, W] → T RLEs
        entries[str(first_anno_id + obj.obj_id - 1)] = [rle if seen.any() else None for rle, seen in zip(rles, visible)]
    return entries


def mevis_expressions_entry(scene: VideoScene, expressions: list[GroupExpression], first_anno_id: int | None) -> dict:
    """The video's MeViS ``meta_expressions.json`` entry; ``obj_id`` (from 0) and ``anno_id`` lists unless
    ``first_anno_id`` is None (a split without masks)."""
    entries = {}
    for exp_id, expression in enumerate(expressions):
        entry = {"exp": expression.text}
        if first_anno_id is not None:
            entry["obj_id"] = [obj_id - 1 for obj_id in expression.obj_ids]
            entry["anno_id"] = [first_anno_id + obj_id - 1 for obj_id in expression.obj_ids]
        entries[str(exp_id)] = entry
    return {"expressions": entries, "frames": scene.frame_names}


def write_mevis_dataset(output: str | Path, *, seed: int, num_train_videos: int, num_valid_videos: int,
                        num_frames: int, height: int, width: int, expressions_per_object: int,
                        train_frames: int | None = None) -> dict[str, SplitStatistics]:
    """Generate and write the MeViS layout (see the module docstring); ``valid_u`` and ``valid`` get
    ``num_valid_videos`` each; the training videos have ``train_frames`` frames (default ``num_frames``).

    Returns:
        split name → its statistics.
    """
    output = Path(output)
    statistics = {}
    for split, num_videos in zip(MEVIS_SPLITS, (num_train_videos, num_valid_videos, num_valid_videos)):
        videos = generate_mevis_split(seed, split, num_videos, height=height, width=width,
                                      num_frames=_split_frames(split, num_frames, train_frames),
                                      expressions_per_object=expressions_per_object)
        with_masks = split in MEVIS_SPLITS_WITH_MASKS
        entries, mask_dict = {}, {}
        for scene, expressions in videos:
            write_frames(scene, output / split)
            entries[scene.name] = mevis_expressions_entry(scene, expressions, len(mask_dict) if with_masks else None)
            mask_dict.update(mevis_masks(scene, len(mask_dict)))
        _write_json(output / split / META_EXPRESSIONS_FILE, {"videos": entries})
        if with_masks:
            with (output / split / MASK_DICT_FILE).open("w", encoding="utf-8") as f:
                json.dump(mask_dict, f)
        stats = split_statistics([scene for scene, _ in videos])
        groups = [(scene, e) for scene, expressions in videos for e in expressions if len(e.obj_ids) > 1]
        stats.expressions += len(groups)
        stats.group_expressions = len(groups)
        stats.motion_expressions += sum("motion" in e.attributes for _, e in groups)
        stats.motion_needed_expressions += sum(group_needs_motion(scene.objects, e) for scene, e in groups)
        statistics[split] = stats
    return statistics


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags; sizes are validated."""
    parser = argparse.ArgumentParser(description="Generate the synthetic Ref-Shapes dataset (Ref-YouTube-VOS layout, "
                                                 "or MeViS layout with --layout mevis)")
    parser.add_argument("--layout", default="ytvos", choices=LAYOUTS,
                        help="ytvos: Ref-YouTube-VOS layout (--dataset_file ref_shapes); mevis: MeViS layout with "
                             "expressions of several objects too (--dataset_file mevis, eval_mevis.py)")
    parser.add_argument("--output", default=None,
                        help=f"dataset root to write (use it as --ytvos_path, or --mevis_path with --layout mevis); "
                             f"default {DEFAULT_OUTPUT}, {DEFAULT_MEVIS_OUTPUT} with --layout mevis")
    parser.add_argument("--seed", default=0, type=int, help="same seed, same bytes")
    parser.add_argument("--num_train_videos", default=DEFAULT_TRAIN_VIDEOS, type=_positive_int)
    parser.add_argument("--num_valid_videos", default=DEFAULT_VALID_VIDEOS, type=_positive_int,
                        help="videos of valid (and of valid_u with --layout mevis)")
    parser.add_argument("--frames", default=DEFAULT_FRAMES, type=_positive_int, help="frames per video")
    parser.add_argument("--train_frames", default=None, type=_positive_int,
                        help="frames per training video (default --frames); e.g. more, shorter training videos for "
                             "a model trained on one-frame clips: more scenes for the same number of samples")
    parser.add_argument("--height", default=DEFAULT_SIZE, type=_positive_int, help="frame height in pixels")
    parser.add_argument("--width", default=DEFAULT_SIZE, type=_positive_int, help="frame width in pixels")
    parser.add_argument("--expressions_per_object", default=DEFAULT_EXPRESSIONS_PER_OBJECT, type=_positive_int,
                        help="at most this many expressions per object (fewer when fewer descriptions are unique)")
    args = parser.parse_args(argv)
    if min(args.frames, args.train_frames or args.frames) < 2:
        parser.error("--frames and --train_frames must be at least 2: the motion words need two frames")
    if min(args.height, args.width) < 32:
        parser.error("--height and --width must be at least 32 pixels for the shapes to be recognisable")
    if args.output is None:
        args.output = DEFAULT_MEVIS_OUTPUT if args.layout == "mevis" else DEFAULT_OUTPUT
    return args


def main(argv: list[str] | None = None) -> dict[str, SplitStatistics]:
    """Write the dataset and log its statistics."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    start = time.time()
    write = write_mevis_dataset if args.layout == "mevis" else write_dataset
    statistics = write(args.output, seed=args.seed, num_train_videos=args.num_train_videos,
                       num_valid_videos=args.num_valid_videos, num_frames=args.frames, height=args.height,
                       width=args.width, expressions_per_object=args.expressions_per_object,
                       train_frames=args.train_frames)
    for split, stats in statistics.items():
        logger.info("%s: %d videos, %d frames, %d objects, %d expressions (%d name the motion, %d need it; "
                    "%d videos with look-alike twins)", split, stats.videos, stats.frames, stats.objects,
                    stats.expressions, stats.motion_expressions, stats.motion_needed_expressions, stats.twin_videos)
        if args.layout == "mevis":
            logger.info("%s: %d of the expressions refer to several objects", split, stats.group_expressions)
    logger.info("wrote %s in %.1f s", args.output, time.time() - start)
    return statistics


if __name__ == "__main__":
    main()
