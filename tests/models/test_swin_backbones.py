"""Swin and Video Swin backbones: checkpoint API, parity with the original, pretrained files, checkpointing.

Key schemas are built with the real-size RoBERTa config (no weights); parity uses the golden
Swin-T / Video-Swin-T cases; the remaining tests use tiny variants (same code, fewer channels)
so they run in seconds on a CPU.
"""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from models.backbone import BACKBONES
from models.swin_transformer import SWIN_VARIANTS, SwinTransformer, SwinVariant
from models.video_swin_transformer import VideoSwinTransformer
from tests.golden import REFERENCE_DIR, TOKENIZER_DIR, load_case
from tests.models.test_referformer_parity import compare_intermediates, compare_outputs
from tools.run_reference_case import build_args, run_case
from util.checkpoint import (
    CheckpointMismatchError,
    convert_video_swin_kinetics_state,
    load_swin_imagenet_weights,
    load_video_swin_kinetics_weights,
)

ROBERTA_BASE_CONFIG = json.loads((REFERENCE_DIR / "roberta_base_config.json").read_text())
TINY_TEXT_CONFIG = json.loads((REFERENCE_DIR / "text_encoder_config.json").read_text())

# Measured on this machine (1 thread): the four backbone feature maps equal the original's bit for
# bit (max|Δ| = 0) in both cases; 1e-6 of scale leaves room for other BLAS builds only.
BACKBONE_REL_TOL = 1e-6
# Whole-model outputs, max|Δ| / max|ref| over every output tensor: model_eval_swin_t 5.7e-6
# (|Δ| ≈ 2e-7 on pred_logits), model_eval_video_swin_t 5.5e-6 (|Δ| 3.1e-7); the original's own
# float32-vs-float64 spread on these cases is 5.7e-6 / 9.6e-6 (reference README), so the
# differences (all downstream of the backbone) are rounding. Tolerance: 1e-4 of scale.
OUTPUT_REL_TOL = 1e-4
# All intermediates (encoder memory, ...): worst measured 8.4e-7 (Swin-T) and 6.9e-7
# (Video-Swin-T) of scale; 1e-5 leaves an order of magnitude for summation order.
INTERMEDIATE_REL_TOL = 1e-5

# Tiny variants for the fast tests: same code paths (4 stages, shifted and plain blocks, merging).
TINY = SwinVariant(embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), drop_path_rate=0.2)
TINY_DEEPER = SwinVariant(embed_dim=8, depths=(2, 2, 4, 2), num_heads=(1, 2, 2, 4), drop_path_rate=0.2)


def schema_opts(backbone: str) -> dict:
    """Original defaults plus the Ref-YouTube-VOS script flags, as used for the key schemas."""
    return {"backbone": backbone, "with_box_refine": True, "binary": True, "freeze_text_encoder": True, "device": "cpu"}


def randomize(module: nn.Module, seed: int) -> nn.Module:
    """Non-trivial values for every float parameter/buffer (LayerNorms are 1/0 after init)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in module.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(0.1 * torch.randn(tensor.shape, generator=generator))
    return module


# ----------------------------------------------------------------------------- checkpoint API
# (key schemas of every backbone: tests/models/test_checkpoint_schema.py)
@pytest.mark.parametrize("backbone", ["swin_t_p4w7", "video_swin_t_p4w7"])
def test_parameter_counts_and_trainability_match_summary(backbone):
    """Registration order and trainability of the backbone parameters (optimizer state is positional)."""
    from models import build_model
    from models.text_encoder import load_tokenizer, text_encoder_from_config

    summary = json.loads((REFERENCE_DIR / "keys" / "_summary.json").read_text())[backbone]
    model, _, _ = build_model(
        build_args(schema_opts(backbone)),
        text_encoder=text_encoder_from_config(ROBERTA_BASE_CONFIG),
        tokenizer=load_tokenizer(str(TOKENIZER_DIR)),
    )
    named = list(model.named_parameters())
    assert len(named) == summary["num_named_parameters"]
    assert sum(p.numel() for _, p in named) == summary["num_params_unique"]
    trainable = [p for _, p in named if p.requires_grad]
    assert len(trainable) == summary["num_trainable_named_parameters"]
    assert sum(p.numel() for p in trainable) == summary["num_trainable_params"]
    buffers = {k for k, v in model.state_dict().items() if not v.is_floating_point()}
    assert buffers == set(summary["non_float32_keys"])


# ----------------------------------------------------------------------------- golden parity
@pytest.fixture(scope="module", params=["model_eval_swin_t.pt", "model_eval_video_swin_t.pt"])
def golden(request):
    case = load_case(request.param)
    torch.set_num_threads(1)
    return case, run_case(case, TOKENIZER_DIR)


def test_backbone_features_match_original(golden):
    case, result = golden
    features = {k: v for k, v in case["intermediates"].items() if k.startswith("backbone.feature.")}
    assert len(features) == 4
    compare_intermediates(result["intermediates"], features, BACKBONE_REL_TOL)


def test_eval_outputs_match_original(golden):
    case, result = golden
    compare_outputs(result["outputs"], case["outputs"], OUTPUT_REL_TOL)


def test_eval_intermediates_match_original(golden):
    case, result = golden
    compare_intermediates(result["intermediates"], case["intermediates"], INTERMEDIATE_REL_TOL)


# ----------------------------------------------------------------------------- pretrained files
def imagenet_swin_file(variant: SwinVariant, path, seed: int = 1) -> dict[str, torch.Tensor]:
    """An ImageNet Swin classifier file in the official layout; returns its backbone tensors."""
    backbone = randomize(SwinTransformer(variant), seed).state_dict()
    state = {k: v for k, v in backbone.items() if not k.startswith(("norm0", "norm1", "norm2", "norm3"))}
    for stage, depth in enumerate(variant.depths):
        for block in range(1, depth, 2):  # shifted blocks of the classifier keep a 224-resolution mask
            state[f"layers.{stage}.blocks.{block}.attn_mask"] = torch.zeros(64 >> (2 * stage) or 1, 49, 49)
    last = variant.num_channels[-1]
    state.update({"norm.weight": torch.ones(last), "norm.bias": torch.zeros(last),
                  "head.weight": torch.zeros(1000, last), "head.bias": torch.zeros(1000)})
    torch.save({"model": state}, path)
    return backbone


def kinetics_video_swin_file(variant: SwinVariant, path, seed: int = 2) -> dict[str, torch.Tensor]:
    """A Kinetics Video Swin recogniser file in the official (mmaction) layout; returns the raw backbone."""
    model = randomize(VideoSwinTransformer(variant), seed)
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith("downsamples."):
            _, stage, rest = key.split(".", 2)
            key = f"layers.{stage}.downsample.{rest}"
        state[f"backbone.{key}"] = value
    generator = torch.Generator().manual_seed(seed)
    channels = variant.embed_dim
    # The published models use (2, 4, 4) patches; ReferFormer sums their kernel over time.
    state["backbone.patch_embed.proj.weight"] = torch.randn(channels, 3, 2, 4, 4, generator=generator)
    last = variant.num_channels[-1]
    state.update({"backbone.norm.weight": torch.ones(last), "backbone.norm.bias": torch.zeros(last),
                  "cls_head.fc_cls.weight": torch.zeros(400, last), "cls_head.fc_cls.bias": torch.zeros(400)})
    torch.save({"meta": {"epoch": 30}, "state_dict": state}, path)
    return state


def test_swin_imagenet_file_loads(tmp_path):
    path = tmp_path / "swin_imagenet.pth"
    expected = imagenet_swin_file(TINY, path)
    body = SwinTransformer(TINY)
    stage_norm = body.norm2.weight.clone()
    report = load_swin_imagenet_weights(body, path, backbone="tiny")
    assert sorted(report.missing_keys) == sorted(k for k in expected if k.startswith(("norm0", "norm1", "norm2", "norm3")))
    assert report.unexpected_keys == ()
    loaded = body.state_dict()
    for key, value in expected.items():
        if not key.startswith(("norm0", "norm1", "norm2", "norm3")):
            assert torch.equal(loaded[key], value), key
    assert torch.equal(body.norm2.weight, stage_norm)  # not in the file: keeps its initialisation


def test_video_swin_kinetics_file_loads_with_temporal_kernel_sum(tmp_path):
    path = tmp_path / "video_swin_kinetics.pth"
    raw = kinetics_video_swin_file(TINY, path)
    body = VideoSwinTransformer(TINY)
    report = load_video_swin_kinetics_weights(body, path, backbone="tiny")
    assert report.complete
    loaded = body.state_dict()
    assert torch.equal(loaded["patch_embed.proj.weight"], raw["backbone.patch_embed.proj.weight"].sum(2, keepdim=True))
    assert torch.equal(loaded["downsamples.1.reduction.weight"], raw["backbone.layers.1.downsample.reduction.weight"])
    assert torch.equal(
        loaded["layers.3.blocks.1.attn.relative_position_bias_table"],
        raw["backbone.layers.3.blocks.1.attn.relative_position_bias_table"],
    )
    converted = convert_video_swin_kinetics_state(torch.load(path, weights_only=True))
    assert not any(k.startswith(("norm.", "cls_head")) or k.endswith("relative_position_index") for k in converted)


def test_builders_load_real_size_pretrained_files(tmp_path):
    """Through the registry, as ``--backbone_pretrained`` does, with the real Swin-T layout."""
    path = tmp_path / "swin_tiny_patch4_window7_224.pth"
    expected = imagenet_swin_file(SWIN_VARIANTS["swin_t_p4w7"], path)
    body = BACKBONES["swin_t_p4w7"]("swin_t_p4w7", train_backbone=True, pretrained_path=str(path)).body
    key = "layers.2.blocks.5.attn.relative_position_bias_table"
    assert torch.equal(body.state_dict()[key], expected[key])


def test_pretrained_file_of_another_size_names_both_layouts(tmp_path):
    path = tmp_path / "deeper.pth"
    imagenet_swin_file(TINY_DEEPER, path)
    with pytest.raises(CheckpointMismatchError, match=r"expects Swin .*depths 2-2-2-2.*holds Swin .*depths 2-2-4-2"):
        load_swin_imagenet_weights(SwinTransformer(TINY), path, backbone="tiny")
    kinetics_video_swin_file(TINY_DEEPER, path)
    with pytest.raises(CheckpointMismatchError, match=r"expects Video Swin .*depths 2-2-2-2.*holds Video Swin .*2-2-4-2"):
        load_video_swin_kinetics_weights(VideoSwinTransformer(TINY), path, backbone="tiny")


def test_pretrained_file_of_another_architecture_is_refused(tmp_path):
    kinetics = tmp_path / "kinetics.pth"
    kinetics_video_swin_file(TINY, kinetics)
    with pytest.raises(CheckpointMismatchError, match=r"'model' entry; found top-level \['meta', 'state_dict'\]"):
        load_swin_imagenet_weights(SwinTransformer(TINY), kinetics, backbone="tiny")
    imagenet = tmp_path / "imagenet.pth"
    imagenet_swin_file(TINY, imagenet)
    with pytest.raises(CheckpointMismatchError, match=r"'state_dict' entry; found top-level \['model'\]"):
        load_video_swin_kinetics_weights(VideoSwinTransformer(TINY), imagenet, backbone="tiny")
    # 2-D Swin weights repackaged as a Kinetics file: the layouts name both families
    state = torch.load(imagenet, weights_only=True)["model"]
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in state.items()}}, imagenet)
    with pytest.raises(CheckpointMismatchError, match=r"expects Video Swin \(patch 1x4x4.*holds Swin \(patch 4x4"):
        load_video_swin_kinetics_weights(VideoSwinTransformer(TINY), imagenet, backbone="tiny")
    resnet = tmp_path / "resnet.pth"
    torch.save({"model": {"conv1.weight": torch.zeros(64, 3, 7, 7)}}, resnet)
    with pytest.raises(CheckpointMismatchError, match="holds no Swin layout"):
        load_swin_imagenet_weights(SwinTransformer(TINY), resnet, backbone="tiny")


# ----------------------------------------------------------------------------- checkpointing
@pytest.mark.parametrize("family", [SwinTransformer, VideoSwinTransformer])
def test_activation_checkpointing_gives_identical_outputs_and_gradients(family):
    plain = randomize(family(TINY), seed=3).train()  # train mode: DropPath draws random numbers
    checkpointed = family(TINY).train()
    checkpointed.load_state_dict(plain.state_dict())
    checkpointed.set_grad_checkpointing(True)
    frames = torch.randn(4, 3, 40, 44)
    results = []
    for model in (plain, checkpointed):
        torch.manual_seed(0)
        inputs = frames.clone().requires_grad_(True)
        features = model(inputs) if family is SwinTransformer else model(inputs, 2)
        sum((f * torch.linspace(-1, 1, f.numel()).view_as(f)).sum() for f in features).backward()
        grads = {name: p.grad for name, p in model.named_parameters()}
        results.append((features, inputs.grad, grads))
    (out_a, in_a, grads_a), (out_b, in_b, grads_b) = results
    for a, b in zip(out_a, out_b):
        assert torch.equal(a, b)
    assert torch.equal(in_a, in_b)
    for name in grads_a:
        assert torch.equal(grads_a[name], grads_b[name]), name


# ----------------------------------------------------------------------------- input sizes
@pytest.mark.parametrize(
    ("height", "width", "num_frames"),
    [(97, 131, 2), (20, 24, 2), (3, 5, 1), (36, 30, 10)],  # odd; smaller than one window; than one patch; T > 8
)
@pytest.mark.parametrize("family", [SwinTransformer, VideoSwinTransformer])
def test_any_input_size_gives_ceil_stride_maps(family, height, width, num_frames):
    model = randomize(family(TINY), seed=4).eval()
    frames = torch.randn(num_frames, 3, height, width)
    with torch.no_grad():
        features = model(frames) if family is SwinTransformer else model(frames, num_frames)
    h, w = -(-height // 4), -(-width // 4)
    for stage, feature in enumerate(features):
        assert feature.shape == (num_frames, TINY.num_channels[stage], h, w)
        assert torch.isfinite(feature).all()
        h, w = -(-h // 2), -(-w // 2)


@pytest.mark.parametrize("family", [SwinTransformer, VideoSwinTransformer])
def test_clips_are_independent_in_a_batch(family):
    """Batched equals per-clip (per frame for 2-D Swin): padding and windows never mix clips."""
    model = randomize(family(TINY), seed=5).eval()
    frames = torch.randn(6, 3, 50, 38)
    with torch.no_grad():
        run = (lambda x: model(x)) if family is SwinTransformer else (lambda x: model(x, 3))
        batched = run(frames)
        single = [run(frames[i:i + 3]) for i in (0, 3)]
    for stage, feature in enumerate(batched):
        torch.testing.assert_close(feature, torch.cat([s[stage] for s in single]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backbone", ["swin_t_p4w7", "video_swin_t_p4w7"])
@pytest.mark.parametrize(("height", "width"), [(97, 131), (33, 45)])
def test_model_masks_have_input_stride_four_size(backbone, height, width):
    """Whole model on odd-sized clips; at 33×45 the maps of stages 1-3 (5×6, 3×3, 2×2) are smaller than a window.

    (Smaller inputs stop in the pixel decoder, whose stride-4 self-attention downsamples by 8.)
    """
    from models import build_model
    from models.text_encoder import load_tokenizer, text_encoder_from_config

    model, _, _ = build_model(
        build_args(schema_opts(backbone)),
        text_encoder=text_encoder_from_config(TINY_TEXT_CONFIG),
        tokenizer=load_tokenizer(str(TOKENIZER_DIR)),
    )
    model.eval()
    clip = torch.randn(2, 3, height, width)
    with torch.no_grad():
        outputs = model([clip], ["a dog running on the left"], [{"size": torch.tensor([height, width])}])
    assert outputs["pred_masks"].shape == (1, 2, model.num_queries, -(-height // 4), -(-width // 4))
    assert torch.isfinite(outputs["pred_masks"]).all()


def test_dilation_is_refused():
    with pytest.raises(ValueError, match="--dilation applies to ResNet"):
        BACKBONES["swin_t_p4w7"]("swin_t_p4w7", train_backbone=True, dilation=True)
