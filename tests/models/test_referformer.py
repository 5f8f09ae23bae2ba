"""Behaviour of the whole model beyond the golden cases: other options, invariances, bad input."""
from __future__ import annotations

import pytest
import torch

from tests.golden import TOKENIZER_DIR, load_case
from tools.run_reference_case import build_args, fill_by_rule
from util.nested_tensor import nested_tensor_from_videos_list

TINY_TEXT_CONFIG = load_case("model_eval_r50.pt")["text_encoder_config"]


def build_tiny_model(**overrides):
    from models import build_model
    from models.text_encoder import load_tokenizer, text_encoder_from_config

    opts = {
        "backbone": "resnet50", "with_box_refine": True, "binary": True, "freeze_text_encoder": True,
        "hidden_dim": 64, "dim_feedforward": 64, "enc_layers": 2, "dec_layers": 2, "num_queries": 3, "mask_dim": 64,
        "device": "cpu",
    }
    opts.update(overrides)
    model, criterion, _ = build_model(
        build_args(opts), text_encoder=text_encoder_from_config(TINY_TEXT_CONFIG), tokenizer=load_tokenizer(str(TOKENIZER_DIR))
    )
    fill_by_rule(model)
    return model.eval(), criterion


def random_clips(sizes, frames, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(frames, 3, h, w, generator=generator) for h, w in sizes]


def targets_for(clips):
    return [{"size": torch.tensor(clip.shape[-2:])} for clip in clips]


@pytest.fixture(scope="module")
def tiny_model():
    return build_tiny_model()


def test_output_shapes_for_unpadded_list_input(tiny_model):
    model, _ = tiny_model
    clips = random_clips([(70, 90)], frames=2)
    with torch.no_grad():
        out = model(clips, ["a red car"], targets_for(clips))
    assert out["pred_logits"].shape == (1, 2, 3, 1)
    assert out["pred_boxes"].shape == (1, 2, 3, 4)
    # a plain list is padded without rounding (inference scripts): masks at ceil(70/4) x ceil(90/4)
    assert out["pred_masks"].shape == (1, 2, 3, 18, 23)
    assert len(out["aux_outputs"]) == 1
    assert out["reference_points"].shape == (1, 2, 3, 2)
    assert ((out["pred_boxes"] > 0) & (out["pred_boxes"] < 1)).all()


def test_clip_result_does_not_depend_on_batch_companions(tiny_model):
    """A clip batched with another (same size, longer caption) gives the same outputs as alone."""
    model, _ = tiny_model
    clips = random_clips([(64, 64), (64, 64)], frames=2, seed=1)
    captions = ["the dog", "a small animal hiding in the grass on the left"]
    with torch.no_grad():
        together = model(nested_tensor_from_videos_list(clips, 32), captions, targets_for(clips))
        alone = model(nested_tensor_from_videos_list(clips[:1], 32), captions[:1], targets_for(clips[:1]))
    for key in ("pred_logits", "pred_boxes", "pred_masks"):
        torch.testing.assert_close(together[key][:1], alone[key], rtol=1e-4, atol=1e-5)


def test_without_box_refinement_heads_are_shared():
    model, _ = build_tiny_model(with_box_refine=False)
    assert model.class_embed[0] is model.class_embed[1]
    assert model.transformer.decoder.bbox_embed is None
    assert not any(k.startswith("transformer.decoder.bbox_embed") for k in model.state_dict())
    clips = random_clips([(64, 64)], frames=1)
    with torch.no_grad():
        out = model(clips, ["a cat"], targets_for(clips))
    assert out["pred_masks"].shape == (1, 1, 3, 16, 16)


def test_valid_indices_select_one_frame_per_clip(tiny_model):
    model, _ = tiny_model
    clips = random_clips([(64, 64), (64, 64)], frames=3, seed=2)
    targets = [{"size": torch.tensor([64, 64]), "valid_indices": torch.tensor(i)} for i in (2, 0)]
    with torch.no_grad():
        out = model(nested_tensor_from_videos_list(clips, 32), ["a man", "a woman"], targets)
        single = model(nested_tensor_from_videos_list([clips[0][2:]], 32), ["a man"], targets_for([clips[0][2:]]))
    assert out["pred_masks"].shape[1] == 1
    # with a 2-D backbone the other frames are computed and discarded, so frame 2 alone is identical
    torch.testing.assert_close(out["pred_masks"][:1], single["pred_masks"], rtol=1e-4, atol=1e-5)


def test_train_mode_has_no_reference_points_and_losses_backpropagate():
    model, criterion = build_tiny_model()
    model.train()
    clips = random_clips([(64, 64)], frames=2, seed=3)
    mask = torch.zeros(2, 64, 64, dtype=torch.bool)
    mask[:, 10:30, 20:50] = True
    targets = [{
        "size": torch.tensor([64, 64]), "labels": torch.zeros(2, dtype=torch.long),
        "boxes": torch.tensor([[35 / 64, 20 / 64, 30 / 64, 20 / 64]] * 2), "masks": mask, "valid": torch.ones(2, dtype=torch.long),
    }]
    out = model(nested_tensor_from_videos_list(clips, 32), ["a box"], targets)
    assert "reference_points" not in out
    losses = criterion(out, targets)
    total = sum(losses[k] * criterion.weight_dict[k] for k in losses)
    total.backward()
    assert torch.isfinite(total)
    assert model.controller.layers[0].weight.grad is not None
    assert all(p.grad is None for p in model.text_encoder.parameters())  # frozen


def test_mask_out_stride_supervises_upsampled_masks():
    """--mask_out_stride 2 reaches the criterion: only the mask losses change, and they backpropagate."""
    model, criterion = build_tiny_model()
    _, fine_criterion = build_tiny_model(mask_out_stride=2)
    assert (criterion.mask_out_stride, fine_criterion.mask_out_stride) == (4, 2)
    model.train()
    clips = random_clips([(64, 64)], frames=1, seed=4)
    mask = torch.zeros(1, 64, 64, dtype=torch.bool)
    mask[:, 11:29, 21:47] = True  # edges between the stride-4 sampling points
    targets = [{
        "size": torch.tensor([64, 64]), "labels": torch.zeros(1, dtype=torch.long),
        "boxes": torch.tensor([[34 / 64, 20 / 64, 26 / 64, 18 / 64]]), "masks": mask, "valid": torch.ones(1, dtype=torch.long),
    }]
    out = model(nested_tensor_from_videos_list(clips, 32), ["a box"], targets)
    assert out["pred_masks"].shape[-2:] == (16, 16)  # the model still predicts at stride 4
    coarse, fine = criterion(out, targets), fine_criterion(out, targets)
    assert coarse.keys() == fine.keys()
    for name in coarse:
        if name.startswith(("loss_mask", "loss_dice")):
            assert not torch.equal(fine[name], coarse[name]), name
        else:
            assert torch.equal(fine[name], coarse[name]), name
    sum(fine[k] * fine_criterion.weight_dict[k] for k in fine).backward()
    gradient = model.controller.layers[0].weight.grad
    assert gradient is not None and torch.isfinite(gradient).all() and gradient.abs().sum() > 0

def box_target(size: int, frames: int, box: tuple[int, int, int, int]) -> dict:
    """A training target whose object fills the pixel box ``(x0, y0, x1, y1)`` (exclusive ends) in every frame."""
    x0, y0, x1, y1 = box
    mask = torch.zeros(frames, size, size, dtype=torch.bool)
    mask[:, y0:y1, x0:x1] = True
    cxcywh = [(x0 + x1) / 2 / size, (y0 + y1) / 2 / size, (x1 - x0) / size, (y1 - y0) / size]
    return {"size": torch.tensor([size, size]), "labels": torch.zeros(frames, dtype=torch.long),
            "boxes": torch.tensor([cxcywh] * frames), "masks": mask, "valid": torch.ones(frames, dtype=torch.long)}


def test_clips_shared_by_captions_train_as_the_clips_repeated():
    """Captions naming their clip (clip_index, --expressions_per_clip) give the outputs, losses and gradients
    of a batch in which each clip is repeated once per caption (the same dropout draws: the caption-dependent
    part sees the same shapes; the ResNet's BatchNorm is frozen)."""
    model, criterion = build_tiny_model()
    model.train()
    clips = random_clips([(64, 64), (64, 64)], frames=2, seed=5)
    captions = ["the dog", "a cat on the left", "the tree"]
    targets = [box_target(64, 2, box) for box in ((10, 10, 30, 40), (40, 5, 60, 20), (0, 30, 20, 64))]
    runs = {}
    for name, batch, batch_targets in (
        ("shared", clips, [{**t, "clip_index": i} for t, i in zip(targets, (0, 0, 1))]),
        ("repeated", [clips[0], clips[0], clips[1]], targets),
    ):
        model.zero_grad()
        torch.manual_seed(0)
        out = model(nested_tensor_from_videos_list(batch, 32), captions, batch_targets)
        losses = criterion(out, batch_targets)
        sum(losses[k] * criterion.weight_dict[k] for k in losses).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        runs[name] = out, losses, grads
    (out, losses, grads), (out_r, losses_r, grads_r) = runs["shared"], runs["repeated"]
    for key in ("pred_logits", "pred_boxes", "pred_masks"):
        torch.testing.assert_close(out[key], out_r[key], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(losses, losses_r, rtol=1e-4, atol=1e-5)
    assert grads.keys() == grads_r.keys() and any(n.startswith("backbone.") for n in grads)
    for name in grads:
        torch.testing.assert_close(grads[name], grads_r[name], rtol=1e-3, atol=1e-6, msg=name)


@pytest.mark.parametrize("clip_index, match", [
    ([0, 1, 0], "in order"), ([0, 0, 0], "clip 1 of 2 has no caption"), ([0, 1, 2], "in order"),
])
def test_clip_index_must_name_every_clip_in_order(tiny_model, clip_index, match):
    model, _ = tiny_model
    clips = random_clips([(64, 64), (64, 64)], frames=1)
    targets = [{"size": torch.tensor([64, 64]), "clip_index": i} for i in clip_index]
    with pytest.raises(ValueError, match=match):
        model(nested_tensor_from_videos_list(clips, 32), ["a", "b", "c"], targets)


@pytest.mark.parametrize(
    "captions, match",
    [(["a dog", ""], "empty"), (["a dog"], "2 captions|B captions|1 captions"), (["word " * 600, "a dog"], "tokens")],
)
def test_bad_captions_are_rejected(tiny_model, captions, match):
    model, _ = tiny_model
    clips = random_clips([(64, 64), (64, 64)], frames=1)
    with pytest.raises(ValueError, match=match):
        model(nested_tensor_from_videos_list(clips, 32), captions, targets_for(clips))


def test_wrong_input_rank_is_rejected(tiny_model):
    model, _ = tiny_model
    with pytest.raises(ValueError, match=r"\[T, 3, H, W\]"):
        model([torch.randn(3, 64, 64)], ["a dog"], [{"size": torch.tensor([64, 64])}])


def test_input_smaller_than_the_fpn_reduction_is_rejected(tiny_model):
    model, _ = tiny_model
    clips = random_clips([(24, 24)], frames=1)
    with pytest.raises(ValueError, match="input too small"):
        model(clips, ["a dog"], targets_for(clips))


def test_fpn_dropout_sets_the_cross_modal_fpn_alone(tiny_model):
    """``--fpn_dropout`` (the original's fixed 0.1 by default) reaches every dropout of the FPN's
    vision-language blocks and nothing else."""
    from models.cross_modal_fpn import VisionLanguageBlock

    def fpn_rates(model):
        blocks = [m for m in model.pixel_decoder.modules() if isinstance(m, VisionLanguageBlock)]
        return {m.p for b in blocks for m in b.modules() if isinstance(m, torch.nn.Dropout)} | {
            m.dropout for b in blocks for m in b.modules() if isinstance(m, torch.nn.MultiheadAttention)}

    assert fpn_rates(tiny_model[0]) == {0.1}
    model, _ = build_tiny_model(fpn_dropout=0.0)
    assert fpn_rates(model) == {0.0}
    assert model.transformer.decoder.layers[0].self_attn.dropout == 0.1


@pytest.mark.parametrize("sr_ratio", [1, 2])
def test_vision_language_block_without_dropout_trains_as_it_evaluates(sr_ratio):
    """Without dropout a training forward takes the fused attention (no weights to drop) and computes
    what evaluation does; with dropout each forward drops other elements."""
    from models.cross_modal_fpn import VisionLanguageBlock

    t, h, w, b, words = 2, 4, 6, 2, 5
    generator = torch.Generator().manual_seed(0)
    visual, visual_pos = torch.randn(2, t * h * w, b, 16, generator=generator)
    text, text_pos = torch.randn(2, words, b, 16, generator=generator)
    visual_mask = torch.zeros(b, t * h * w, dtype=torch.bool)
    text_mask = torch.tensor([[False] * words, [False] * 3 + [True] * 2])
    inputs = (visual, text, t, h, w, visual_mask, text_mask, text_pos, visual_pos)
    for dropout in (0.0, 0.1):
        torch.manual_seed(1)
        block = VisionLanguageBlock(16, 4, dim_feedforward=32, dropout=dropout, sr_ratio=sr_ratio)
        evaluated = block.eval()(*inputs)
        block.train()
        trained = [block(*inputs) for _ in range(2)]
        if dropout == 0:
            # both take scaled_dot_product_attention: bit-identical on the development machine
            torch.testing.assert_close(trained[0], evaluated, rtol=1e-6, atol=1e-6)
            assert torch.equal(trained[0], trained[1])
        else:
            assert not torch.equal(trained[0], trained[1])
