"""A miniature dataset in the MeViS layout, written by tests, with its ground truth kept as arrays.

Every video has moving rectangles (objects) that may overlap; object 0 is absent from the last frame
and object 1 from the first (``null`` in ``mask_dict.json``). Expressions refer to one object, to two
(their union is the target) and, in videos of three objects, to objects 1 and 2. ``anno_id`` s count
the objects of a split in video order; frames are named ``00000``, ``00001``, … as in MeViS.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as coco_mask

# split → video → (width, height, frames, objects)
VIDEOS: dict[str, dict[str, tuple[int, int, int, int]]] = {
    "train": {"walk": (56, 40, 5, 3), "jump": (48, 48, 4, 2)},
    "valid_u": {"run": (40, 32, 4, 3), "swim": (36, 44, 3, 2)},
    "valid": {"fly": (44, 36, 3, 2), "dive": (32, 32, 2, 2)},
}
# expression id → (text, objects it refers to) for a video of 2 or 3 objects
EXPRESSIONS = {
    2: {"0": ("the first rectangle", (0,)), "1": ("the two rectangles moving right", (0, 1))},
    3: {"0": ("the first rectangle", (0,)), "1": ("the two rectangles moving right", (0, 1)),
        "2": ("the last two rectangles", (1, 2))},
}
SPLITS_WITH_MASKS = ("train", "valid_u")


@dataclass
class SyntheticMevis:
    """What :func:`write_mevis` wrote: its root and the ground truth.

    Attributes:
        root: the MeViS root.
        object_masks: ``split → video → bool [objects, T, H, W]`` (all False where absent).
        anno_ids: ``split → video → anno_id (str) of each object``.
        expressions: ``split → video → exp_id → (text, object indices)``.
    """

    root: Path
    object_masks: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    anno_ids: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    expressions: dict[str, dict[str, dict[str, tuple[str, tuple[int, ...]]]]] = field(default_factory=dict)

    def target(self, split: str, video: str, exp_id: str) -> np.ndarray:
        """bool ``[T, H, W]``: union of the expression's objects per frame."""
        return self.object_masks[split][video][list(self.expressions[split][video][exp_id][1])].any(axis=0)

    def frames(self, split: str, video: str) -> list[str]:
        return frame_names(VIDEOS[split][video][2])


def frame_names(num_frames: int) -> list[str]:
    return [f"{t:05d}" for t in range(num_frames)]


def object_masks(width: int, height: int, num_frames: int, num_objects: int) -> np.ndarray:
    """bool ``[objects, T, H, W]``: rectangles moving right, object 0 absent last, object 1 absent first."""
    masks = np.zeros((num_objects, num_frames, height, width), dtype=bool)
    for k in range(num_objects):
        for t in range(num_frames):
            if (k == 0 and t == num_frames - 1) or (k == 1 and t == 0):
                continue
            x0 = (2 + 3 * t + 7 * k) % (width // 2)
            y0 = (3 + 5 * k) % (height // 2)
            masks[k, t, y0:y0 + height // 3, x0:x0 + width // 3] = True
    return masks


def encode(mask: np.ndarray) -> dict:
    """COCO RLE of a bool ``[H, W]`` mask with a string ``counts``, as ``mask_dict.json`` stores it."""
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def write_mevis(root: str | Path, splits: tuple[str, ...] = tuple(VIDEOS)) -> SyntheticMevis:
    """Write ``splits`` of the miniature MeViS under ``root``; returns the ground truth."""
    data = SyntheticMevis(Path(root))
    rng = np.random.default_rng(0)
    for split in splits:
        videos, mask_dict = {}, {}
        data.object_masks[split], data.anno_ids[split], data.expressions[split] = {}, {}, {}
        for video, (width, height, num_frames, num_objects) in VIDEOS[split].items():
            masks = object_masks(width, height, num_frames, num_objects)
            frames = frame_names(num_frames)
            folder = data.root / split / "JPEGImages" / video
            folder.mkdir(parents=True, exist_ok=True)
            for stem in frames:
                image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
                Image.fromarray(image).save(folder / f"{stem}.jpg", quality=95)
            anno_ids = [str(len(mask_dict) + k) for k in range(num_objects)]
            for anno_id, object_mask in zip(anno_ids, masks):
                mask_dict[anno_id] = [encode(m) if m.any() else None for m in object_mask]
            expressions = EXPRESSIONS[num_objects]
            entries = {}
            for exp_id, (text, objects) in expressions.items():
                entries[exp_id] = {"exp": text}
                if split in SPLITS_WITH_MASKS:
                    entries[exp_id].update(obj_id=list(objects), anno_id=[int(anno_ids[k]) for k in objects])
            videos[video] = {"expressions": entries, "frames": frames}
            data.object_masks[split][video], data.anno_ids[split][video] = masks, anno_ids
            data.expressions[split][video] = dict(expressions)
        (data.root / split / "meta_expressions.json").write_text(json.dumps({"videos": videos}))
        if split in SPLITS_WITH_MASKS:
            (data.root / split / "mask_dict.json").write_text(json.dumps(mask_dict))
    return data


def edit_json(path: str | Path, edit) -> None:
    """Apply ``edit(data)`` to a JSON file and write it back."""
    path = Path(path)
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
