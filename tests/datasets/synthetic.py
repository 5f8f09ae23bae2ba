"""Miniature datasets in the Ref-YouTube-VOS layout (also the converted Ref-DAVIS17 layout), written by tests."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

# DAVIS-style palette: index i gets a distinct colour (only the indices matter to the readers).
PALETTE = [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0] + [0] * (256 * 3 - 12)


def object_box(video_index: int, obj_id: int, frame: int, height: int, width: int) -> tuple[int, int, int, int]:
    """Inclusive pixel box ``(x0, y0, x1, y1)`` of object ``obj_id`` in ``frame``: a rectangle moving right."""
    x0 = (5 + 3 * frame + 17 * obj_id + video_index) % (width // 2)
    y0 = (4 + 11 * obj_id) % (height // 2)
    return x0, y0, x0 + width // 4, y0 + height // 4


def write_dataset(root: str | Path, *, split: str = "train", videos: int = 2, frames: int = 6, objects: int = 2,
                  height: int = 48, width: int = 64, categories: tuple[str, ...] = ("cat", "dog"),
                  captions: tuple[str, ...] = ("the cat on the left", "a bright dog")) -> Path:
    """Write ``videos`` videos of ``frames`` frames with ``objects`` moving rectangles and one
    expression per object; returns ``root``. Object ``k`` is absent from the last frame of video 1."""
    root = Path(root)
    meta_videos, expression_videos = {}, {}
    rng = np.random.default_rng(0)
    for v in range(videos):
        name = f"video{v}"
        (root / split / "JPEGImages" / name).mkdir(parents=True, exist_ok=True)
        (root / split / "Annotations" / name).mkdir(parents=True, exist_ok=True)
        stems = [f"{5 * f:05d}" for f in range(frames)]
        for f, stem in enumerate(stems):
            image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            annotation = np.zeros((height, width), dtype=np.uint8)
            for obj_id in range(1, objects + 1):
                if v == 1 and f == frames - 1 and obj_id == objects:
                    continue
                x0, y0, x1, y1 = object_box(v, obj_id, f, height, width)
                annotation[y0:y1 + 1, x0:x1 + 1] = obj_id
            Image.fromarray(image).save(root / split / "JPEGImages" / name / f"{stem}.jpg", quality=95)
            png = Image.fromarray(annotation, mode="P")
            png.putpalette(PALETTE)
            png.save(root / split / "Annotations" / name / f"{stem}.png")
        meta_videos[name] = {"objects": {str(k): {"category": categories[(k - 1) % len(categories)], "frames": stems}
                                         for k in range(1, objects + 1)}}
        expression_videos[name] = {
            "expressions": {str(k - 1): {"exp": captions[(k - 1) % len(captions)], "obj_id": str(k)}
                            for k in range(1, objects + 1)},
            "frames": stems,
        }
    (root / split / "meta.json").write_text(json.dumps({"videos": meta_videos}))
    expressions_file = root / "meta_expressions" / split / "meta_expressions.json"
    expressions_file.parent.mkdir(parents=True, exist_ok=True)
    expressions_file.write_text(json.dumps({"videos": expression_videos}))
    return root


def edit_expressions(root: str | Path, edit, split: str = "train") -> None:
    """Apply ``edit(data)`` to the parsed ``meta_expressions.json`` and write it back."""
    path = Path(root) / "meta_expressions" / split / "meta_expressions.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
