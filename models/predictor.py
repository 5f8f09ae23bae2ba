"""The one video predictor: clip + referring expressions → chosen query → masks at the original size.

Used by ``inference_ytvos.py``, ``inference_davis.py`` (through ``video_inference.py``) and the
demo. Per clip it

1. resizes the frames to a short side of 360 and normalises them (:func:`preprocess_frames`);
2. runs the caption-independent part of the model once (:meth:`ReferFormer.forward_visual`) and the
   rest for batches of expressions sharing it (:meth:`ReferFormer.forward_heads`); with
   ``reuse_features=False`` it runs one full forward per expression instead, as the original.
   With ``frames_per_pass``, a longer clip runs through the model in slices of that many frames, so
   activation memory does not grow with the video length (an approximation, see
   :class:`VideoPredictor`);
3. picks one query per expression for the whole clip (:func:`select_best_query`) and keeps only
   that query's low-resolution mask logits, box and reference point (:class:`ExpressionPrediction`);
4. upsamples those logits straight to the original frame size a few frames at a time
   (:func:`iter_upsampled_logits`), so full-resolution memory does not grow with the video length.

Glossary as in ``models/referformer.py``: T frames, Q queries, K classes, E expressions, h×w the
mask size (stride 4 of the resized input), H×W the original frame size.
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch import Tensor

from datasets.transforms import IMAGENET_MEAN, IMAGENET_STD
from models.cpu_inference import cpu_inference, use_channels_last
from models.postprocessors import select_best_query, upsample_query_masks
from models.referformer import ReferFormer, VisualFeatures
from util.amp import autocast

# Frames are resized so that their short side is 360 px (torchvision ``Resize(360)``), as the original.
INFERENCE_SHORT_SIDE = 360
# Expressions run through the caption-dependent part of the model together. Batches fill a GPU better;
# on a CPU the work per expression is the same and activation memory grows with the batch
# (benchmarks/inference.py), so expressions run one at a time there.
GPU_EXPRESSIONS_PER_BATCH = 4
CPU_EXPRESSIONS_PER_BATCH = 1
# Full-resolution planes (frames × objects) upsampled at once: bounds the memory of the last step.
UPSAMPLE_PLANES = 8
# The outputs kept per slice of a long clip until every frame is seen and the query can be chosen.
SLICE_OUTPUTS = ("pred_logits", "pred_boxes", "pred_masks", "reference_points")


def default_expressions_per_batch(device: torch.device | str) -> int:
    """:data:`GPU_EXPRESSIONS_PER_BATCH` on CUDA, :data:`CPU_EXPRESSIONS_PER_BATCH` elsewhere."""
    return GPU_EXPRESSIONS_PER_BATCH if torch.device(device).type == "cuda" else CPU_EXPRESSIONS_PER_BATCH


def preprocess_frames(frames: Sequence[Image.Image], short_side: int = INFERENCE_SHORT_SIDE) -> Tensor:
    """RGB frames → model input ``[T, 3, h, w]``: ``Resize(short_side)`` (PIL bilinear), ``ToTensor``, normalise."""
    tensors = []
    for frame in frames:
        resized = TF.resize(frame, short_side)
        tensors.append(TF.normalize(TF.to_tensor(resized), IMAGENET_MEAN, IMAGENET_STD))
    return torch.stack(tensors)  # [T, 3, h, w]


@dataclass(frozen=True)
class ExpressionPrediction:
    """What is kept of one expression on one clip: the chosen query's outputs.

    Attributes:
        query_index: the chosen query (argmax of ``query_scores``).
        query_scores: ``[Q]`` class probability per query, averaged over T and maxed over K.
        mask_logits: ``[T, h, w]`` the chosen query's mask logits (stride 4 of the model input), on
            the model's device (upsampling runs there).
        boxes: ``[T, 4]`` its boxes, cxcywh normalised to the frame.
        reference_points: ``[T, 2]`` its reference points (x, y) normalised to the frame.
    """

    query_index: int
    query_scores: Tensor
    mask_logits: Tensor
    boxes: Tensor
    reference_points: Tensor


class VideoPredictor:
    """Wraps a :class:`ReferFormer` in eval mode for clip-level referring segmentation.

    Args:
        model: the model (put in eval mode and moved to ``device`` here).
        device: where the model runs.
        expressions_per_batch: expressions sharing one pass through the caption-dependent part
            (default: :func:`default_expressions_per_batch` of ``device``).
        reuse_features: compute the backbone once per clip for all expressions; ``False`` runs the
            original's one full forward per expression (the reference the fast path is tested against).
        short_side: frames are resized to this short side (default :data:`INFERENCE_SHORT_SIDE`).
        amp_dtype: run the model under autocast in this dtype (``--amp``: :func:`util.amp.amp_settings`);
            None: float32. The predictions are float32 either way.
        frames_per_pass: 0 (default): every clip runs whole, as the original. Otherwise a longer clip
            runs in slices of this many frames, so that the model's memory is that of
            ``frames_per_pass`` frames. The query is still chosen over the whole clip (the slices'
            outputs of all queries are kept on the CPU until then: E × T × Q low-resolution masks),
            but the frames of a slice see only each other where the model looks across frames (the
            cross-modal FPN's self-attention over all pixels of a clip, Video Swin's windows), so the
            masks differ from the whole clip's.

    On the CPU the model's convolution weights are put in channels-last layout and its forward runs
    with :func:`models.cpu_inference.cpu_inference` (same float32 arithmetic, faster kernels).
    """

    def __init__(
        self,
        model: ReferFormer,
        *,
        device: torch.device | str = "cpu",
        expressions_per_batch: int | None = None,
        reuse_features: bool = True,
        short_side: int | None = None,
        amp_dtype: torch.dtype | None = None,
        frames_per_pass: int = 0,
    ):
        self.device = torch.device(device)
        if frames_per_pass < 0:
            raise ValueError(f"frames_per_pass must be 0 (whole clips) or positive, got {frames_per_pass}")
        if expressions_per_batch is None:
            expressions_per_batch = default_expressions_per_batch(self.device)
        if expressions_per_batch < 1:
            raise ValueError(f"expressions_per_batch must be at least 1, got {expressions_per_batch}")
        self.model = model.to(self.device).eval()
        if self.device.type == "cpu":
            use_channels_last(self.model)
        self.amp_dtype = amp_dtype
        self.expressions_per_batch = expressions_per_batch
        self.reuse_features = reuse_features
        self.short_side = short_side or INFERENCE_SHORT_SIDE
        self.frames_per_pass = frames_per_pass

    def preprocess(self, frames: Sequence[Image.Image]) -> Tensor:
        """RGB frames → model input ``[T, 3, h, w]`` (:func:`preprocess_frames` at :attr:`short_side`)."""
        return preprocess_frames(frames, self.short_side)

    @torch.no_grad()
    def predict_clip(self, clip: Tensor, captions: Sequence[str]) -> Iterator[list[ExpressionPrediction]]:
        """Run every caption on one clip, yielding the predictions batch by batch (caption order).

        Args:
            clip: ``[T, 3, h, w]`` from :func:`preprocess_frames`.
            captions: E referring expressions (raw text, as the original passes them).

        Yields:
            lists of :class:`ExpressionPrediction`, one per caption of the batch; the lists concatenate
            to E predictions in caption order.
        """
        if clip.ndim != 4 or clip.shape[1] != 3:
            raise ValueError(f"clip must be [T, 3, h, w], got shape {tuple(clip.shape)}")
        clip = clip.to(self.device)
        target = {"size": torch.as_tensor(clip.shape[-2:], device=self.device)}
        if not self.reuse_features:
            for caption in captions:
                with self._forward_context():
                    outputs = self.model([clip], [caption], [target])
                yield [_choose_query(outputs, 0)]
            return
        if 0 < self.frames_per_pass < clip.shape[0]:
            yield from self._predict_in_slices(clip, captions, target)
            return
        with self._forward_context():
            visual: VisualFeatures = self.model.forward_visual([clip])
        for _, batch in self._caption_batches(captions):
            outputs = self._forward_batch(visual, batch, target)
            yield [_choose_query(outputs, i) for i in range(len(batch))]

    def _caption_batches(self, captions: Sequence[str]) -> Iterator[tuple[int, list[str]]]:
        """``(index of the first caption, captions)`` of each batch of :attr:`expressions_per_batch`."""
        for start in range(0, len(captions), self.expressions_per_batch):
            yield start, list(captions[start : start + self.expressions_per_batch])

    def _forward_batch(self, visual: VisualFeatures, batch: list[str], target: dict) -> dict:
        """The last decoder layer's outputs for ``batch`` captions sharing one clip's ``visual`` features."""
        with self._forward_context():
            return self.model.forward_heads(visual.repeat_clips(len(batch)), batch, [target] * len(batch),
                                            aux_outputs=False)

    def _predict_in_slices(self, clip: Tensor, captions: Sequence[str], target: dict) -> Iterator[list[ExpressionPrediction]]:
        """:meth:`predict_clip` of a long clip, :attr:`frames_per_pass` frames per forward: the outputs of
        every query are gathered on the CPU over the slices, then the query is chosen over all frames."""
        gathered: list[dict[str, list[Tensor]]] = [{key: [] for key in SLICE_OUTPUTS} for _ in captions]
        for frame_start in range(0, clip.shape[0], self.frames_per_pass):
            with self._forward_context():
                visual = self.model.forward_visual([clip[frame_start : frame_start + self.frames_per_pass]])
            for batch_start, batch in self._caption_batches(captions):
                outputs = self._forward_batch(visual, batch, target)
                for i in range(len(batch)):
                    for key in SLICE_OUTPUTS:
                        gathered[batch_start + i][key].append(outputs[key][i].float().cpu())  # [t, Q, ...]
            del visual  # before the next slice's features are computed
        for batch_start, batch in self._caption_batches(captions):
            predictions = []
            for slices in gathered[batch_start : batch_start + len(batch)]:
                outputs = {key: torch.cat(slices[key])[None] for key in SLICE_OUTPUTS}  # [1, T, Q, ...]
                prediction = _choose_query(outputs, 0)
                predictions.append(dataclasses.replace(prediction, mask_logits=prediction.mask_logits.to(self.device)))
                slices.clear()
            yield predictions

    @contextlib.contextmanager
    def _forward_context(self) -> Iterator[None]:
        """Autocast (``amp_dtype``) and the CPU kernels around one forward; not held across a ``yield``,
        so that the caller's code between batches runs outside them."""
        with autocast(self.device, self.amp_dtype), cpu_inference(self.model):
            yield


def _choose_query(outputs: dict, index: int) -> ExpressionPrediction:
    """Keep the best query of clip ``index`` of the model outputs (moved to the CPU)."""
    # float32 whatever the autocast dtype the model ran in
    query_index, query_scores = select_best_query(outputs["pred_logits"][index].float())  # [T, Q, K] → int, [Q]
    return ExpressionPrediction(
        query_index=query_index,
        query_scores=query_scores.cpu(),
        mask_logits=outputs["pred_masks"][index, :, query_index].float(),  # [T, h, w], stays on the model's device
        boxes=outputs["pred_boxes"][index, :, query_index].float().cpu(),  # [T, 4]
        reference_points=outputs["reference_points"][index, :, query_index].float().cpu(),  # [T, 2]
    )


def frames_per_chunk(num_planes: int) -> int:
    """How many frames to upsample at once when each frame has ``num_planes`` masks (objects)."""
    return max(1, UPSAMPLE_PLANES // max(1, num_planes))


def iter_upsampled_logits(
    mask_logits: Sequence[Tensor], orig_size: tuple[int, int], chunk: int
) -> Iterator[tuple[int, Tensor]]:
    """Upsample the chosen logits of several expressions to the original size, ``chunk`` frames at a time.

    Bilinear resizing treats each frame independently, so the chunks equal slices of one big
    :func:`upsample_query_masks` call.

    Args:
        mask_logits: E tensors ``[T, h, w]`` (same T).
        orig_size: ``(H, W)``.
        chunk: frames per step.

    Yields:
        ``(start, logits)``: first frame index of the chunk and ``[E, t, H, W]`` logits, ``t <= chunk``.
    """
    num_frames = mask_logits[0].shape[0]
    for start in range(0, num_frames, chunk):
        stop = min(start + chunk, num_frames)
        upsampled = [upsample_query_masks(m[start:stop, None].float(), 0, orig_size) for m in mask_logits]
        yield start, torch.stack(upsampled)  # [E, t, H, W]


def load_predictor(
    args, checkpoint_path: str | Path, device: torch.device | str, expressions_per_batch: int | None = None
) -> VideoPredictor:
    """The model of ``checkpoint_path`` (a checkpoint file, a model folder or a Hugging Face Hub id), wrapped.

    The model is built with the options stored with the weights wherever ``args`` (the command line) does not
    give them, and loaded strictly (:func:`models.pretrained.load_trained_model`): official ReferFormer
    checkpoints, ``main.py``'s and exported folders need no model flags. ``args.amp`` (``--amp``) runs it
    under autocast (:func:`util.amp.amp_settings`). On the CPU the process keeps freed memory for reuse
    (:func:`util.memory.reuse_freed_memory`) and computes with no more threads than it has CPUs
    (:func:`util.threads.limit_threads_to_cpu_budget`).
    """
    from models.pretrained import load_trained_model
    from util.amp import amp_settings
    from util.memory import reuse_freed_memory
    from util.threads import limit_threads_to_cpu_budget

    device = torch.device(device)
    if device.type == "cpu":
        reuse_freed_memory()
        limit_threads_to_cpu_budget()
    amp_dtype, _ = amp_settings(args.amp, device)
    model, _ = load_trained_model(args, checkpoint_path)
    return VideoPredictor(model, device=device, expressions_per_batch=expressions_per_batch, short_side=args.short_side,
                          amp_dtype=amp_dtype, frames_per_pass=args.frames_per_pass)
