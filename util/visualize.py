"""Colours, palettes and overlays for looking at predictions.

* :func:`colormap` — Detectron's 79-colour map, as the original's ``tools/colormap.py``
  (float RGB × 255, returned in BGR order by default; the original's inference scripts use the
  BGR triples as if they were RGB, and :func:`expression_color` does the same so that pictures
  look like the original's).
* :func:`davis_palette` — the 256-colour DAVIS (= PASCAL VOC) palette of the label PNGs,
  computed by the usual bit-interleaving rule instead of read from ``blackswan/00000.png``.
* :func:`draw_prediction` — a frame with a mask blended 50/50, a box and a reference-point cross,
  as ``inference_ytvos.py --visualize`` of the original; :func:`overlay_labels` for label maps.
* :func:`save_gif` — an animated GIF from a list of images.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw

# Detectron's colour map (detectron/utils/colormap.py): 79 RGB colours in [0, 1].
_DETECTRON_COLORS = (
    (0.000, 0.447, 0.741), (0.850, 0.325, 0.098), (0.929, 0.694, 0.125), (0.494, 0.184, 0.556),
    (0.466, 0.674, 0.188), (0.301, 0.745, 0.933), (0.635, 0.078, 0.184), (0.300, 0.300, 0.300),
    (0.600, 0.600, 0.600), (1.000, 0.000, 0.000), (1.000, 0.500, 0.000), (0.749, 0.749, 0.000),
    (0.000, 1.000, 0.000), (0.000, 0.000, 1.000), (0.667, 0.000, 1.000), (0.333, 0.333, 0.000),
    (0.333, 0.667, 0.000), (0.333, 1.000, 0.000), (0.667, 0.333, 0.000), (0.667, 0.667, 0.000),
    (0.667, 1.000, 0.000), (1.000, 0.333, 0.000), (1.000, 0.667, 0.000), (1.000, 1.000, 0.000),
    (0.000, 0.333, 0.500), (0.000, 0.667, 0.500), (0.000, 1.000, 0.500), (0.333, 0.000, 0.500),
    (0.333, 0.333, 0.500), (0.333, 0.667, 0.500), (0.333, 1.000, 0.500), (0.667, 0.000, 0.500),
    (0.667, 0.333, 0.500), (0.667, 0.667, 0.500), (0.667, 1.000, 0.500), (1.000, 0.000, 0.500),
    (1.000, 0.333, 0.500), (1.000, 0.667, 0.500), (1.000, 1.000, 0.500), (0.000, 0.333, 1.000),
    (0.000, 0.667, 1.000), (0.000, 1.000, 1.000), (0.333, 0.000, 1.000), (0.333, 0.333, 1.000),
    (0.333, 0.667, 1.000), (0.333, 1.000, 1.000), (0.667, 0.000, 1.000), (0.667, 0.333, 1.000),
    (0.667, 0.667, 1.000), (0.667, 1.000, 1.000), (1.000, 0.000, 1.000), (1.000, 0.333, 1.000),
    (1.000, 0.667, 1.000), (0.167, 0.000, 0.000), (0.333, 0.000, 0.000), (0.500, 0.000, 0.000),
    (0.667, 0.000, 0.000), (0.833, 0.000, 0.000), (1.000, 0.000, 0.000), (0.000, 0.167, 0.000),
    (0.000, 0.333, 0.000), (0.000, 0.500, 0.000), (0.000, 0.667, 0.000), (0.000, 0.833, 0.000),
    (0.000, 1.000, 0.000), (0.000, 0.000, 0.167), (0.000, 0.000, 0.333), (0.000, 0.000, 0.500),
    (0.000, 0.000, 0.667), (0.000, 0.000, 0.833), (0.000, 0.000, 1.000), (0.000, 0.000, 0.000),
    (0.143, 0.143, 0.143), (0.286, 0.286, 0.286), (0.429, 0.429, 0.429), (0.571, 0.571, 0.571),
    (0.714, 0.714, 0.714), (0.857, 0.857, 0.857), (1.000, 1.000, 1.000),
)
# Mask overlays mix frame and colour half and half, as the original.
MASK_ALPHA = 0.5
BOX_LINE_WIDTH = 2
# The reference point is drawn as a cross of ±10 px lines, 4 px wide.
CROSS_HALF_LENGTH = 10
CROSS_LINE_WIDTH = 4
PALETTE_SIZE = 256
GIF_FRAME_MS = 100


def colormap(rgb: bool = False, maximum: int = 255) -> np.ndarray:
    """Detectron's colour map ``[79, 3]`` float, scaled to ``maximum``; BGR order unless ``rgb``."""
    colors = np.array(_DETECTRON_COLORS, dtype=np.float64) * maximum
    return colors if rgb else colors[:, ::-1].copy()


def expression_color(index: int) -> tuple[int, int, int]:
    """Overlay colour of expression ``index``: the BGR colour map entry ``index mod 79``, used as RGB
    (and truncated to integers) like the original's inference scripts."""
    colors = colormap()
    return tuple(int(c) for c in colors[index % len(colors)])


def davis_palette() -> np.ndarray:
    """The DAVIS/PASCAL-VOC palette ``[256, 3]`` uint8: label 0 black, 1 (128, 0, 0), 2 (0, 128, 0), …

    Bit ``3k + c`` of the label sets bit ``7 - k`` of colour channel c (c = R, G, B).
    """
    palette = np.zeros((PALETTE_SIZE, 3), dtype=np.uint8)
    for label in range(PALETTE_SIZE):
        value = label
        for bit in range(8):
            for channel in range(3):
                palette[label, channel] |= ((value >> channel) & 1) << (7 - bit)
            value >>= 3
    return palette


def load_palette(png: str | Path | None) -> np.ndarray:
    """The palette ``[256, 3]`` of a palette PNG (the original reads ``blackswan/00000.png``), or the
    computed :func:`davis_palette` when ``png`` is ``None`` or does not exist."""
    if png is None or not Path(png).is_file():
        return davis_palette()
    with Image.open(png) as image:
        raw = image.getpalette()
    if raw is None:
        raise ValueError(f"{png} has no palette; pass a palette PNG such as DAVIS's blackswan/00000.png")
    colors = np.zeros((PALETTE_SIZE, 3), dtype=np.uint8)
    raw = np.array(raw, dtype=np.uint8).reshape(-1, 3)[:PALETTE_SIZE]
    colors[: len(raw)] = raw
    return colors


def palette_image(labels: np.ndarray, palette: np.ndarray) -> Image.Image:
    """``[H, W]`` uint8 label map → palette ("P") image."""
    image = Image.fromarray(np.ascontiguousarray(labels, dtype=np.uint8), mode="P")
    image.putpalette(palette.reshape(-1).tolist())
    return image


def blend_mask(frame: np.ndarray, mask: np.ndarray, color: Sequence[int], alpha: float = MASK_ALPHA) -> np.ndarray:
    """``frame [H, W, 3]`` uint8 with ``color`` mixed in where ``mask [H, W]`` is set (as the original:
    ``pixel * (1 - alpha) + color * alpha``, truncated to uint8)."""
    out = frame.copy()
    selected = mask.astype(bool)
    out[selected] = (out[selected] * (1 - alpha) + np.asarray(color, dtype=np.float64) * alpha).astype(np.uint8)
    return out


def draw_prediction(
    frame: np.ndarray,
    mask: np.ndarray,
    color: Sequence[int],
    box: Sequence[float] | None = None,
    reference_point: Sequence[float] | None = None,
) -> Image.Image:
    """One frame of ``--visualize``: box, reference cross, then the mask blended on top.

    Args:
        frame: ``[H, W, 3]`` uint8 RGB at the original size.
        mask: ``[H, W]`` binary mask at the same size.
        color: RGB triple.
        box: ``(cx, cy, w, h)`` normalised to the frame size.
        reference_point: ``(x, y)`` normalised to the frame size.
    """
    image = Image.fromarray(frame)
    width, height = image.size
    draw = ImageDraw.Draw(image)
    color = tuple(int(c) for c in color)
    if box is not None:
        cx, cy, w, h = (float(v) for v in box)
        xyxy = [(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height]
        if xyxy[2] >= xyxy[0] and xyxy[3] >= xyxy[1]:
            draw.rectangle(xyxy, outline=color, width=BOX_LINE_WIDTH)
    if reference_point is not None:
        x, y = float(reference_point[0]) * width, float(reference_point[1]) * height
        draw.line((x - CROSS_HALF_LENGTH, y, x + CROSS_HALF_LENGTH, y), color, width=CROSS_LINE_WIDTH)
        draw.line((x, y - CROSS_HALF_LENGTH, x, y + CROSS_HALF_LENGTH), color, width=CROSS_LINE_WIDTH)
    return Image.fromarray(blend_mask(np.asarray(image), mask, color))


def overlay_labels(frame: np.ndarray, labels: np.ndarray, palette: np.ndarray, alpha: float = MASK_ALPHA) -> Image.Image:
    """``frame [H, W, 3]`` with every non-zero label of ``labels [H, W]`` blended in its palette colour."""
    out = frame.copy()
    foreground = labels > 0
    colors = palette[labels[foreground]].astype(np.float64)
    out[foreground] = (out[foreground] * (1 - alpha) + colors * alpha).astype(np.uint8)
    return Image.fromarray(out)


def save_gif(frames: Iterable[Image.Image | str | Path], path: str | Path, frame_ms: int = GIF_FRAME_MS) -> None:
    """Write the images (or image files) as a looping animated GIF."""
    images = [Image.open(f) if isinstance(f, (str, Path)) else f for f in frames]
    if not images:
        raise ValueError(f"no frames to write to {path}")
    images = [image.convert("RGB") for image in images]
    images[0].save(path, save_all=True, append_images=images[1:], duration=frame_ms, loop=0)
