"""RefCOCO/+/g images as pseudo-videos for joint training.

A clip of T frames is made from one image: the image itself and T − 1 copies, each moved by a
random perspective and affine transform (with the referred object's mask) and photometrically
altered, in a random order. The clip then gets the video training transforms like a
Ref-YouTube-VOS clip.

The original built the copies with imgaug, seeded from the wall clock; imgaug does not run with
NumPy ≥ 2, so the same operations are written here with OpenCV and drawn from the sample's NumPy
stream: a clip is a function of (seed, epoch, index) like every other
sample. Per copy, following the original's imgaug pipeline:

1. one or both (a random non-empty subset, applied in this order) of: add an integer
   ``U{−40, 40}`` to all channels (``iaa.Add``); add an integer ``v ∈ U{−5, 5}`` to hue and
   saturation (``iaa.AddToHueAndSaturation``: OpenCV 8-bit HSV, the hue shift projected from
   imgaug's 255-step circle to OpenCV's 180 steps and wrapped, the saturation clipped);
2. perspective (``iaa.PerspectiveTransform(scale=0.08)``): each corner moves inward by
   ``|N(0, 0.08)|`` (mod 1) of the width and, independently, of the height, and the
   quadrilateral they span is stretched back onto the whole frame (imgaug's ``keep_size``; done
   here by one warp instead of imgaug's warp-then-resize);
3. affine (``iaa.Affine``): translation ``U(−10 %, 10 %)`` of the width and of the height,
   rotation ``U(−20°, 20°)`` about the frame centre, scale 1;
4. with probability 0.25, motion blur with a 9 or 11 pixel line kernel at an angle ``U(0°, 360°)``
   (imgaug's ``MotionBlur``; its ``direction`` weighting is not reproduced: the line is uniform).

Steps 2 and 3 warp the image bilinearly and the mask by nearest neighbour, with zeros outside the
source. Boxes are the tight inclusive boxes of the moved masks. After the clip transforms, frames
whose mask is empty get the zero box, and all boxes are clamped to at least 1e-6, as in the original.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from torch import Tensor

from datasets.refexp import ReferredObject, ReferringImageDataset
from datasets.sampling import SampleRandom
from datasets.transforms import Compose, Target, make_clip_transforms
from util.box_ops import masks_to_boxes

# iaa.Add((-40, 40)): one integer for all channels.
BRIGHTNESS_DELTA = 40
# iaa.AddToHueAndSaturation((-5, 5)): one integer for hue and saturation.
HUE_SATURATION_DELTA = 5
# imgaug's hue circle has 255 steps, OpenCV's 8-bit hue 180 (degrees / 2).
IMGAUG_HUE_STEPS = 255
OPENCV_HUE_STEPS = 180
# iaa.PerspectiveTransform(scale=0.08): standard deviation of a corner's shift, as a fraction of the size.
PERSPECTIVE_SCALE = 0.08
# iaa.Affine(translate_percent=(-0.1, 0.1), rotate=(-20, 20)).
MAX_TRANSLATION = 0.1
MAX_ROTATION_DEGREES = 20.0
# iaa.Sometimes(0.25, iaa.OneOf([iaa.MotionBlur(9), iaa.MotionBlur(11)])).
MOTION_BLUR_PROBABILITY = 0.25
MOTION_BLUR_KERNEL_SIZES = (9, 11)
MOTION_BLUR_ANGLES = (0.0, 360.0)  # degrees: any direction
# After the transforms, boxes are kept strictly positive (the original clamps normalised boxes so).
MIN_BOX_VALUE = 1e-6


def adjust_brightness(image: np.ndarray, rand: np.random.RandomState) -> np.ndarray:
    """``[H, W, 3]`` uint8 plus one integer ``U{−40, 40}``, clipped."""
    delta = rand.randint(-BRIGHTNESS_DELTA, BRIGHTNESS_DELTA + 1)
    return np.clip(image.astype(np.int16) + delta, 0, 255).astype(np.uint8)


def adjust_hue_saturation(image: np.ndarray, rand: np.random.RandomState) -> np.ndarray:
    """``[H, W, 3]`` uint8 RGB with one integer ``U{−5, 5}`` added to hue (wrapped) and saturation (clipped)."""
    delta = rand.randint(-HUE_SATURATION_DELTA, HUE_SATURATION_DELTA + 1)
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV).astype(np.int16)  # H in [0, 180), S, V in [0, 255]
    hue_delta = int(round(delta * OPENCV_HUE_STEPS / IMGAUG_HUE_STEPS))
    hsv[..., 0] = np.mod(hsv[..., 0] + hue_delta, OPENCV_HUE_STEPS)
    hsv[..., 1] = np.clip(hsv[..., 1] + delta, 0, 255)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)


PHOTOMETRIC_OPS = (adjust_brightness, adjust_hue_saturation)


def perspective_matrix(height: int, width: int, rand: np.random.RandomState) -> np.ndarray:
    """``[3, 3]`` homography stretching a random inner quadrilateral onto the whole ``height × width`` frame."""
    shift = np.mod(np.abs(rand.normal(0.0, PERSPECTIVE_SCALE, size=(4, 2))), 1.0)  # [corner, (x, y)] fractions
    unit_corners = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], dtype=np.float64)  # tl, tr, br, bl
    inner = (unit_corners + (1 - 2 * unit_corners) * shift) * [width, height]  # each corner moved inward
    frame = unit_corners * [width - 1, height - 1]
    return cv2.getPerspectiveTransform(inner.astype(np.float32), frame.astype(np.float32))


def affine_matrix(height: int, width: int, rand: np.random.RandomState) -> np.ndarray:
    """``[2, 3]`` rotation ``U(−20°, 20°)`` about the frame centre plus a translation of up to 10 % per axis."""
    tx, ty = rand.uniform(-MAX_TRANSLATION, MAX_TRANSLATION, size=2)
    angle = rand.uniform(-MAX_ROTATION_DEGREES, MAX_ROTATION_DEGREES)
    matrix = cv2.getRotationMatrix2D(((width - 1) / 2, (height - 1) / 2), angle, 1.0)
    matrix[:, 2] += (tx * width, ty * height)
    return matrix


def motion_blur_kernel(size: int, angle: float) -> np.ndarray:
    """``[size, size]`` float32 kernel summing to 1: a centred line of length ``size`` at ``angle`` degrees."""
    line = np.zeros((size, size), dtype=np.float32)
    line[:, size // 2] = 1.0
    rotation = cv2.getRotationMatrix2D(((size - 1) / 2, (size - 1) / 2), angle, 1.0)
    kernel = cv2.warpAffine(line, rotation, (size, size), flags=cv2.INTER_LINEAR)
    return kernel / kernel.sum()


def augment_copy(image: np.ndarray, mask: np.ndarray, rand: np.random.RandomState) -> tuple[np.ndarray, np.ndarray]:
    """One augmented copy (module docstring, steps 1–4) of an ``[H, W, 3]`` uint8 RGB image and its
    ``[H, W]`` uint8 mask; the mask gets the geometric steps only."""
    height, width = mask.shape
    num_ops = rand.randint(1, len(PHOTOMETRIC_OPS) + 1)
    for op_index in sorted(rand.choice(len(PHOTOMETRIC_OPS), num_ops, replace=False)):
        image = PHOTOMETRIC_OPS[op_index](image, rand)
    warp = {"dsize": (width, height), "borderMode": cv2.BORDER_CONSTANT, "borderValue": 0}
    perspective = perspective_matrix(height, width, rand)
    image = cv2.warpPerspective(image, perspective, flags=cv2.INTER_LINEAR, **warp)
    mask = cv2.warpPerspective(mask, perspective, flags=cv2.INTER_NEAREST, **warp)
    affine = affine_matrix(height, width, rand)
    image = cv2.warpAffine(image, affine, flags=cv2.INTER_LINEAR, **warp)
    mask = cv2.warpAffine(mask, affine, flags=cv2.INTER_NEAREST, **warp)
    if rand.random_sample() < MOTION_BLUR_PROBABILITY:
        size = MOTION_BLUR_KERNEL_SIZES[rand.randint(len(MOTION_BLUR_KERNEL_SIZES))]
        image = cv2.filter2D(image, -1, motion_blur_kernel(size, rand.uniform(*MOTION_BLUR_ANGLES)))
    return image, mask


def make_pseudo_video(image: np.ndarray, mask: np.ndarray, num_frames: int,
                      rng: SampleRandom) -> tuple[list[np.ndarray], list[np.ndarray], list[int]]:
    """T frames and masks from one ``[H, W, 3]`` uint8 image and its ``[H, W]`` uint8 mask.

    Returns ``(frames, masks, copies)``: T ``[H, W, 3]`` uint8 frames, T ``[H, W]`` uint8 masks and,
    for each position, which copy it holds (0 = the unaltered image, 1..T−1 augmented copies); the
    order is a random permutation drawn from ``rng.python``, the augmentation from ``rng.numpy``.
    """
    frames, masks = [image], [mask]
    for _ in range(num_frames - 1):
        frame, frame_mask = augment_copy(image, mask, rng.numpy)
        frames.append(frame)
        masks.append(frame_mask)
    copies = list(range(num_frames))
    rng.python.shuffle(copies)
    return [frames[c] for c in copies], [masks[c] for c in copies], copies


def finish_boxes(target: Target) -> Target:
    """Give frames whose (transformed) mask is empty the zero box, then clamp every box to ≥ 1e-6."""
    target = dict(target)
    boxes = target["boxes"].clone()  # [T, 4] normalised cxcywh
    boxes[~target["masks"].flatten(1).any(dim=1)] = 0
    target["boxes"] = boxes.clamp(min=MIN_BOX_VALUE)
    return target


class PseudoVideoDataset(ReferringImageDataset):
    """Training clips ``([T, 3, H, W] frames, target)`` made from the images of one RefCOCO/+/g split.

    Target keys as :class:`~datasets.ref_video.ReferringVideoDataset`'s: ``frames_idx [T]`` (which
    copy each frame is, 0 = the unaltered image), ``labels [T]`` (0: joint training is binary),
    ``boxes [T, 4]`` (normalised cxcywh, ≥ 1e-6), ``masks [T, H, W]`` bool, ``valid [T]`` int32,
    ``caption``, ``orig_size``/``size``, ``image_id`` and ``skipped``. A clip in which no frame is
    valid after the transforms is replaced by a random other sample.

    Args:
        coco_path, name, split, seed, skip_bad_samples: as :class:`~datasets.refexp.ReferringImageDataset`.
        num_frames: T, frames per clip.
        transforms: the video training transforms.
    """

    def __init__(self, coco_path: str | Path, name: str, split: str, *, num_frames: int, transforms: Compose,
                 seed: int, skip_bad_samples: bool = False):
        super().__init__(coco_path, name, split, transforms=transforms, seed=seed, binary=True,
                         replace_invisible=True, skip_bad_samples=skip_bad_samples)
        self.num_frames = num_frames

    def load_sample(self, sample: ReferredObject, rng: SampleRandom) -> tuple[Tensor, dict]:
        """Read ``sample``, make its pseudo-video and transform it (raises
        :class:`~datasets.ref_video.BadSampleError`)."""
        image, mask, _ = self.read_object(sample)
        frames, masks, copies = make_pseudo_video(np.asarray(image), mask.astype(np.uint8), self.num_frames, rng)
        masks_t = torch.from_numpy(np.stack(masks)).float()  # [T, H, W]
        target = {
            "frames_idx": torch.tensor(copies),
            "labels": torch.full((self.num_frames,), self.label(sample), dtype=torch.long),
            "boxes": masks_to_boxes(masks_t),  # [T, 4] inclusive pixel xyxy, zeros where absent
            "masks": masks_t,
            "valid": masks_t.flatten(1).any(dim=1).to(torch.int32),
            "caption": sample.caption,
            "orig_size": torch.tensor([sample.height, sample.width]),
            "size": torch.tensor([sample.height, sample.width]),
            "image_id": sample.image_id,
        }
        clip, target = self.transforms([Image.fromarray(frame) for frame in frames], target, rng)
        return clip, finish_boxes(target)


def build(split: str, args: argparse.Namespace, name: str) -> PseudoVideoDataset:
    """Pseudo-video training clips of RefCOCO dataset ``name`` (``args.num_frames`` frames) under ``args.coco_path``."""
    if split != "train":
        raise ValueError(f"the {name} pseudo-videos are training data only; evaluate {name} as images "
                         f"(--dataset_file {name})")
    return PseudoVideoDataset(
        args.coco_path, name, split, num_frames=args.num_frames,
        transforms=make_clip_transforms(split, max_size=args.max_size, caption_flip=args.caption_flip,
                                        photometric=args.photometric_distort),
        seed=args.seed, skip_bad_samples=args.skip_bad_samples,
    )
