"""The video predictor: feature reuse and expression batching equal one full forward per expression."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from models.postprocessors import upsample_query_masks
from models.predictor import VideoPredictor, default_expressions_per_batch, iter_upsampled_logits, preprocess_frames
from tests.tiny_inference import build_random_tiny_model

CAPTIONS = [
    "the dog",
    "a small animal hiding in the grass on the left",
    "a red car",
    "person",
    "the second bird from the right flying away",
]
# Batched expressions are padded to the longest caption and run through batched matrix products,
# so logits differ from one-at-a-time by float rounding: measured on this clip, max |Δ| 1.2e-5 on
# mask logits of magnitude 2.8 (4e-6 relative), 1e-8 on query scores, 0 on boxes. Tolerance: 1e-4
# of each output's scale.
REL_TOL = 1e-4


@pytest.fixture(scope="module")
def model():
    return build_random_tiny_model(seed=0)


@pytest.fixture(scope="module")
def clip():
    return torch.randn(3, 3, 64, 80, generator=torch.Generator().manual_seed(0))


def predict_all(predictor: VideoPredictor, clip, captions):
    return [prediction for batch in predictor.predict_clip(clip, captions) for prediction in batch]


@pytest.fixture(scope="module")
def reference(model, clip):
    return predict_all(VideoPredictor(model, reuse_features=False), clip, CAPTIONS)


def test_forward_is_visual_then_heads(model, clip):
    targets = [{"size": torch.tensor(clip.shape[-2:])}]
    with torch.no_grad():
        full = model([clip], ["a dog"], targets)
        split = model.forward_heads(model.forward_visual([clip], targets), ["a dog"], targets)
    for key in ("pred_logits", "pred_boxes", "pred_masks", "reference_points"):
        assert torch.equal(full[key], split[key]), key


@pytest.mark.parametrize("expressions_per_batch", [1, 2, 5])
def test_feature_reuse_and_batching_match_one_forward_per_expression(model, clip, reference, expressions_per_batch):
    fast = predict_all(VideoPredictor(model, expressions_per_batch=expressions_per_batch), clip, CAPTIONS)
    assert len(fast) == len(reference)
    mask_scale = max(r.mask_logits.abs().max().item() for r in reference)
    # the data exercise the query choice and the threshold: several queries are chosen, masks are mixed
    assert len({r.query_index for r in reference}) > 1
    assert all(0 < (r.mask_logits > 0).float().mean() < 1 for r in reference)
    for r, f in zip(reference, fast):
        assert f.query_index == r.query_index
        torch.testing.assert_close(f.query_scores, r.query_scores, rtol=0, atol=REL_TOL * r.query_scores.abs().max().item())
        torch.testing.assert_close(f.mask_logits, r.mask_logits, rtol=0, atol=REL_TOL * mask_scale)
        torch.testing.assert_close(f.boxes, r.boxes, rtol=0, atol=REL_TOL)
        torch.testing.assert_close(f.reference_points, r.reference_points, rtol=0, atol=REL_TOL)
        # identical binary masks (a pixel whose logit lies within rounding of 0 could flip; none does here,
        # the closest is 1e-4 from 0, ten times the largest difference)
        assert torch.equal(f.mask_logits.sigmoid() > 0.5, r.mask_logits.sigmoid() > 0.5)


def test_batches_follow_caption_order(model, clip):
    batches = list(VideoPredictor(model, expressions_per_batch=2).predict_clip(clip, CAPTIONS))
    assert [len(b) for b in batches] == [2, 2, 1]


def test_repeat_clips_repeats_each_clip_in_a_row(model):
    clips = [torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(s)) for s in (1, 2)]
    with torch.no_grad():
        visual = model.forward_visual(clips)
        repeated = visual.repeat_clips(3)
    assert repeated.num_clips == 6 and repeated.num_frames == 2
    for level, src in enumerate(visual.srcs):
        per_clip = src.unflatten(0, (2, 2))  # [B, T, C, H, W]
        expected = per_clip.repeat_interleave(3, dim=0).flatten(0, 1)
        assert torch.equal(repeated.srcs[level], expected)
    assert torch.equal(repeated.features[0].mask[:6], visual.features[0].mask[:2].repeat(3, 1, 1))


def test_chunked_upsampling_equals_one_call():
    logits = [torch.randn(5, 6, 7, generator=torch.Generator().manual_seed(s)) for s in range(2)]
    chunks = list(iter_upsampled_logits(logits, (23, 29), chunk=2))
    assert [start for start, _ in chunks] == [0, 2, 4]
    stacked = torch.cat([c for _, c in chunks], dim=1)  # [E, T, H, W]
    for e, m in enumerate(logits):
        assert torch.equal(stacked[e], upsample_query_masks(m[:, None], 0, (23, 29)))


def test_preprocess_resizes_short_side_to_360():
    frames = [Image.new("RGB", (150, 100), (255, 0, 0))] * 2
    clip = preprocess_frames(frames)
    assert clip.shape == (2, 3, 360, 540)
    # red normalised with the ImageNet statistics
    torch.testing.assert_close(clip[0, :, 0, 0], torch.tensor([(1 - 0.485) / 0.229, -0.456 / 0.224, -0.406 / 0.225]))


def test_bad_clip_shape_is_rejected(model):
    with pytest.raises(ValueError, match=r"\[T, 3, h, w\]"):
        next(VideoPredictor(model).predict_clip(torch.zeros(3, 64, 64), ["a dog"]))


def test_expressions_run_one_at_a_time_on_the_cpu_and_four_at_a_time_on_cuda(model):
    assert VideoPredictor(model).expressions_per_batch == 1
    assert default_expressions_per_batch("cuda:0") == 4
    with pytest.raises(ValueError, match="at least 1"):
        VideoPredictor(model, expressions_per_batch=0)



def sliced_reference(model, clip, caption, frames_per_pass):
    """One full forward per slice of the clip; the query with the highest class probability averaged over
    all frames of all slices; its outputs concatenated."""
    target = {"size": torch.tensor(clip.shape[-2:])}
    with torch.no_grad():
        slices = [model([clip[i : i + frames_per_pass]], [caption], [target])
                  for i in range(0, len(clip), frames_per_pass)]
    logits = torch.cat([o["pred_logits"][0] for o in slices])  # [T, Q, K]
    query = int(logits.sigmoid().mean(0).max(-1).values.argmax())
    masks = torch.cat([o["pred_masks"][0, :, query] for o in slices])
    boxes = torch.cat([o["pred_boxes"][0, :, query] for o in slices])
    return query, masks, boxes


@pytest.mark.parametrize("frames_per_pass, expressions_per_batch", [(2, 1), (3, 2), (1, 5)])
def test_long_clips_in_slices_choose_the_query_over_the_whole_clip(model, frames_per_pass, expressions_per_batch):
    clip = torch.randn(7, 3, 64, 80, generator=torch.Generator().manual_seed(1))
    predictor = VideoPredictor(model, frames_per_pass=frames_per_pass, expressions_per_batch=expressions_per_batch)
    batches = list(predictor.predict_clip(clip, CAPTIONS))
    assert [len(b) for b in batches] == [len(CAPTIONS[i : i + expressions_per_batch])
                                         for i in range(0, len(CAPTIONS), expressions_per_batch)]
    predictions = [prediction for batch in batches for prediction in batch]
    queries = set()
    for caption, prediction in zip(CAPTIONS, predictions):
        query, masks, boxes = sliced_reference(model, clip, caption, frames_per_pass)
        queries.add(query)
        assert prediction.query_index == query
        assert prediction.mask_logits.shape == (7, 16, 20)
        # feature reuse and batching against full forwards: float rounding (REL_TOL, as above)
        torch.testing.assert_close(prediction.mask_logits, masks, rtol=0, atol=REL_TOL * masks.abs().max().item())
        torch.testing.assert_close(prediction.boxes, boxes, rtol=0, atol=REL_TOL)
    assert len(queries) > 1  # the choice depends on the caption


def test_a_slice_as_long_as_the_clip_is_the_whole_clip(model, clip):
    whole = predict_all(VideoPredictor(model), clip, CAPTIONS)
    sliced = predict_all(VideoPredictor(model, frames_per_pass=len(clip)), clip, CAPTIONS)
    for w, s in zip(whole, sliced):
        assert s.query_index == w.query_index and torch.equal(s.mask_logits, w.mask_logits)
    assert VideoPredictor(model).frames_per_pass == 0  # whole clips by default, as the original
    with pytest.raises(ValueError, match="frames_per_pass"):
        VideoPredictor(model, frames_per_pass=-1)


def test_bfloat16_predictions_are_float32_and_agree_with_float32(model, clip, reference):
    """``amp_dtype`` (--amp): the model runs under bfloat16 autocast, the predictions come back in float32."""
    low = predict_all(VideoPredictor(model, amp_dtype=torch.bfloat16), clip, CAPTIONS)
    full = predict_all(VideoPredictor(model), clip, CAPTIONS)
    inter = union = 0
    for f, b in zip(full, low):
        assert b.mask_logits.dtype == b.boxes.dtype == b.query_scores.dtype == torch.float32
        assert b.query_index == f.query_index
        fm, bm = f.mask_logits > 0, b.mask_logits > 0
        inter, union = inter + (fm & bm).sum().item(), union + (fm | bm).sum().item()
    assert not torch.equal(low[0].mask_logits, full[0].mask_logits)  # it did run in bfloat16
    # measured: pooled mask IoU 0.990 over the five captions, the same query chosen for each
    assert inter / union > 0.95
