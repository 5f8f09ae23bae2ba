"""ReferFormer: the composition of the paper's figure, and nothing else.

    frames ──backbone──► 4 levels ──input_proj──► × words (early fusion) ──► deformable encoder
    caption ──RoBERTa──► words, sentence                                         │
    sentence ×Q queries per frame ─────────────────────────────────────► deformable decoder
    decoder output ──► class, box (refined per layer), dynamic-conv params
    backbone res2 + encoder memory ──cross-modal FPN──► mask features ──dynamic conv──► masks

Glossary: B clips, T frames per clip, Q queries per frame, S word tokens, C = hidden_dim,
K classes, L decoder layers. Flattened axes are written ``B*T``.
"""
from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.backbone import Joiner, resize_mask
from models.cross_modal_fpn import FPN_DROPOUT, CrossModalFPNDecoder
from models.deformable_transformer import DeformableTransformer, inverse_sigmoid
from models.dynamic_mask_head import DynamicMaskHead
from models.fusion import VisionLanguageFusionModule
from models.position_encoding import PositionEmbeddingSine1D
from models.text_encoder import FeatureResizer, encode_text, max_text_tokens, tokenize
from util.nested_tensor import NestedTensor, nested_tensor_from_videos_list

# Focal-loss prior: class logits start at sigmoid⁻¹(0.01) so that early training sees few positives.
CLASS_PRIOR_PROB = 0.01
# Initial box width/height logit of the first box head (sigmoid(-2) ≈ 0.12 of the image).
INITIAL_BOX_SIZE_LOGIT = -2.0
TEXT_FEATURE_DIM = 768  # RoBERTa-base hidden size, hard-coded in the original's resizer
FUSION_HEADS = 8
# Transformer levels: backbone strides 8, 16, 32 plus one extra stride-64 level made from res5.
NUM_BACKBONE_LEVELS = 3
NUM_FEATURE_LEVELS = NUM_BACKBONE_LEVELS + 1


@dataclass(frozen=True)
class VisualFeatures:
    """The caption-independent part of a forward pass (:meth:`ReferFormer.forward_visual`).

    ``N = B*T`` frames (clip-major). Levels of ``features``/``positions`` are the backbone's
    (strides 4, 8, 16, 32); levels of ``srcs``/``masks``/``poses`` are the transformer's
    (strides 8, 16, 32, 64), projected to ``hidden_dim`` but not yet fused with the words.

    Attributes:
        features: backbone maps ``[N, C_l, H_l, W_l]`` with padding masks ``[N, H_l, W_l]``.
        positions: their sine positions ``[N, C, H_l, W_l]``.
        srcs: projected transformer levels ``[N, C, H_l, W_l]``.
        masks: their padding masks ``[N, H_l, W_l]``; poses: their positions ``[N, C, H_l, W_l]``.
        num_clips: B; num_frames: T.
        finest_visual: the pixel decoder's caption-independent start of its stride-4 stage
            ``[T*H*W, B, C]`` (:meth:`CrossModalFPNDecoder.forward_visual`); computed in eval mode only,
            so that training draws its dropout in the original's order.
    """

    features: list[NestedTensor]
    positions: list[Tensor]
    srcs: list[Tensor]
    masks: list[Tensor]
    poses: list[Tensor]
    num_clips: int
    num_frames: int
    finest_visual: Tensor | None = None

    def repeat_clips(self, repeats: int | Sequence[int]) -> "VisualFeatures":
        """Each clip repeated in a row, ``repeats`` times or ``repeats[b]`` times for clip b (clip 0 becomes clips
        ``0 .. repeats[0]-1``, and so on), so that several captions of one clip run through
        :meth:`ReferFormer.forward_heads` as one batch."""
        b, t = self.num_clips, self.num_frames
        counts = [repeats] * b if isinstance(repeats, int) else list(repeats)
        if len(counts) != b or min(counts) < 1:
            raise ValueError(f"expected a positive repeat count for each of the {b} clips, got {repeats}")
        if max(counts) == 1:
            return self
        counts_t = torch.tensor(counts, device=self.masks[0].device)

        def rep(x: Tensor) -> Tensor:
            x = x.unflatten(0, (b, t))  # [B, T, ...]
            return x.repeat_interleave(counts_t, dim=0, output_size=sum(counts)).flatten(0, 1)  # [sum(counts)*T, ...]

        return VisualFeatures(
            features=[NestedTensor(rep(f.tensors), rep(f.mask)) for f in self.features],
            positions=[rep(p) for p in self.positions],
            srcs=[rep(s) for s in self.srcs],
            masks=[rep(m) for m in self.masks],
            poses=[rep(p) for p in self.poses],
            num_clips=sum(counts),
            num_frames=t,
            finest_visual=(None if self.finest_visual is None  # [T*H*W, B, C]
                           else self.finest_visual.repeat_interleave(counts_t, dim=1, output_size=sum(counts))),
        )


def captions_per_clip(clip_index: Sequence[int], num_clips: int) -> list[int]:
    """How many captions each of ``num_clips`` clips has, from the clip of every caption (consecutive, in clip order).

    Raises:
        ValueError: the indices are out of order, skip a clip or name one that does not exist.
    """
    counts = [0] * num_clips
    for previous, index in zip([0, *clip_index], clip_index):
        if not (0 <= index < num_clips and previous <= index):
            raise ValueError(f"clip_index of the targets must run through 0..{num_clips - 1} in order, got "
                             f"{list(clip_index)}")
        counts[index] += 1
    if 0 in counts:
        raise ValueError(f"clip {counts.index(0)} of {num_clips} has no caption (clip_index {list(clip_index)})")
    return counts


class MLP(nn.Module):
    """``num_layers`` Linear layers (``layers.0..``) with ReLU between them."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(n, k) for n, k in zip(dims_in, dims_out))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = F.relu(layer(x)) if i < len(self.layers) - 1 else layer(x)
        return x


class ReferFormer(nn.Module):
    """Referring video object segmentation with language as queries.

    Args:
        backbone: a :class:`Joiner` (features at strides 4/8/16/32 and their positions).
        transformer: the deformable transformer.
        text_encoder: a ``RobertaModel`` with pooler; tokenizer: its tokenizer (not a module).
        num_classes: K (1 for every released video model).
        num_queries: Q per frame.
        with_box_refine: iterative box refinement (all released models use it).
        freeze_text_encoder: text-encoder parameters get ``requires_grad=False``.
        fpn_dropout: dropout of the cross-modal FPN's vision-language blocks (fixed at 0.1 in the original).

    ``models.build_model`` records the options the model was built with in ``config`` (a dict), which
    :meth:`save_pretrained` writes to ``config.json``.
    """

    def __init__(
        self,
        backbone: Joiner,
        transformer: DeformableTransformer,
        text_encoder: nn.Module,
        tokenizer,
        *,
        num_classes: int,
        num_queries: int,
        num_feature_levels: int = NUM_FEATURE_LEVELS,
        mask_dim: int = 256,
        dim_feedforward: int = 2048,
        controller_layers: int = 3,
        dynamic_mask_channels: int = 8,
        aux_loss: bool = True,
        with_box_refine: bool = True,
        freeze_text_encoder: bool = True,
        rel_coord: bool = True,
        fpn_dropout: float = FPN_DROPOUT,
    ):
        super().__init__()
        if num_feature_levels != NUM_FEATURE_LEVELS:
            # The cross-modal FPN consumes exactly the encoder memory at strides 8/16/32; the
            # original breaks with any other level count, so only 4 is offered.
            raise ValueError(f"num_feature_levels must be {NUM_FEATURE_LEVELS}, got {num_feature_levels}")
        hidden_dim = transformer.d_model
        self.num_queries = num_queries
        self.hidden_dim = hidden_dim
        self.num_feature_levels = num_feature_levels
        self.aux_loss = aux_loss
        self.with_box_refine = with_box_refine
        num_decoder_layers = transformer.decoder.num_layers

        # Registration order below is the original's: it fixes state_dict and optimizer order.
        self.transformer = transformer
        class_embed = nn.Linear(hidden_dim, num_classes)
        nn.init.constant_(class_embed.bias, -math.log((1 - CLASS_PRIOR_PROB) / CLASS_PRIOR_PROB))
        bbox_embed = MLP(hidden_dim, hidden_dim, 4, 3)
        nn.init.constant_(bbox_embed.layers[-1].weight, 0)
        nn.init.constant_(bbox_embed.layers[-1].bias, 0)
        if with_box_refine:
            # independent copies per decoder layer; only the first gets the box-size prior (as in the original)
            self.class_embed = nn.ModuleList(copy.deepcopy(class_embed) for _ in range(num_decoder_layers))
            self.bbox_embed = nn.ModuleList(copy.deepcopy(bbox_embed) for _ in range(num_decoder_layers))
            nn.init.constant_(self.bbox_embed[0].layers[-1].bias[2:], INITIAL_BOX_SIZE_LOGIT)
            self.transformer.decoder.bbox_embed = self.bbox_embed
        else:
            nn.init.constant_(bbox_embed.layers[-1].bias[2:], INITIAL_BOX_SIZE_LOGIT)
            self.class_embed = nn.ModuleList([class_embed] * num_decoder_layers)
            self.bbox_embed = nn.ModuleList([bbox_embed] * num_decoder_layers)
            self.transformer.decoder.bbox_embed = None
        self.query_embed = nn.Embedding(num_queries, hidden_dim)

        # 1×1 projections of the backbone levels at strides 8, 16, 32, and a 3×3 stride-2 conv of res5 (stride 64)
        projections = [
            nn.Sequential(nn.Conv2d(in_channels, hidden_dim, kernel_size=1), nn.GroupNorm(32, hidden_dim))
            for in_channels in backbone.num_channels[-NUM_BACKBONE_LEVELS:]
        ]
        projections.append(
            nn.Sequential(
                nn.Conv2d(backbone.num_channels[-1], hidden_dim, kernel_size=3, stride=2, padding=1),
                nn.GroupNorm(32, hidden_dim),
            )
        )
        self.input_proj = nn.ModuleList(projections)
        for projection in self.input_proj:
            nn.init.xavier_uniform_(projection[0].weight, gain=1)
            nn.init.constant_(projection[0].bias, 0)

        self.backbone = backbone
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        if freeze_text_encoder:
            for p in self.text_encoder.parameters():
                p.requires_grad_(False)
        self.resizer = FeatureResizer(TEXT_FEATURE_DIM, hidden_dim)
        self.fusion_module = VisionLanguageFusionModule(d_model=hidden_dim, nhead=FUSION_HEADS)
        self.text_pos = PositionEmbeddingSine1D(hidden_dim, normalize=True)

        feature_channels = [backbone.num_channels[0]] + 3 * [hidden_dim]
        self.pixel_decoder = CrossModalFPNDecoder(
            feature_channels, conv_dim=hidden_dim, mask_dim=mask_dim, dim_feedforward=dim_feedforward, dropout=fpn_dropout
        )
        self.mask_head = DynamicMaskHead(
            in_channels=mask_dim, dynamic_mask_channels=dynamic_mask_channels, num_layers=controller_layers,
            rel_coord=rel_coord,
        )
        self.controller = MLP(hidden_dim, hidden_dim, self.mask_head.num_gen_params, 3)
        for layer in self.controller.layers:
            nn.init.zeros_(layer.bias)
            nn.init.xavier_uniform_(layer.weight)

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike, **kwargs: Any) -> "ReferFormer":
        """The model of a checkpoint file, a model folder or a Hugging Face Hub id, in eval mode on the CPU:
        ``ReferFormer.from_pretrained("output/quickstart/train/checkpoint.pth")``. Keyword arguments and
        errors: :func:`models.pretrained.from_pretrained`."""
        from models.pretrained import from_pretrained

        return from_pretrained(source, **kwargs)

    def save_pretrained(self, directory: str | os.PathLike, **kwargs: Any) -> Path:
        """Write this model as a model folder (``model.safetensors``, ``config.json``, ``text_encoder/``,
        ``README.md``) that :meth:`from_pretrained` reads; see :func:`models.pretrained.save_pretrained`."""
        from models.pretrained import save_pretrained

        return save_pretrained(self, directory, **kwargs)

    def forward_text(self, captions: list[str], device: torch.device) -> tuple[NestedTensor, Tensor]:
        """Captions → word features ``[B, S, C]`` (mask ``[B, S]``) and sentence features ``[B, C]``."""
        tokens = tokenize(self.tokenizer, captions, max_text_tokens(self.text_encoder), device)
        return encode_text(self.text_encoder, self.resizer, tokens)

    def _fuse(self, src: Tensor, b: int, t: int, words: Tensor, text_mask: Tensor, text_pos: Tensor) -> Tensor:
        """Early fusion of one level ``[B*T, C, H, W]`` with the words → same shape."""
        _, c, h, w = src.shape
        visual = src.reshape(b, t, c, h, w).permute(1, 3, 4, 0, 2).reshape(t * h * w, b, c)  # [T*H*W, B, C]
        fused = self.fusion_module(visual, words, text_mask, text_pos)
        return fused.reshape(t, h, w, b, c).permute(3, 0, 4, 1, 2).reshape(b * t, c, h, w)  # [B*T, C, H, W]

    def forward(self, samples: NestedTensor | list[Tensor], captions: list[str], targets: list[dict]) -> dict:
        """
        Args:
            samples: frames ``[B, T, 3, Hp, Wp]`` with padding mask ``[B, T, Hp, Wp]``, or a list of
                ``[T, 3, H, W]`` clips (padded here without rounding, as the inference scripts do).
            captions: B referring expressions; or, for clips shared by several expressions
                (``--expressions_per_clip``), one per target, each target naming its clip in ``clip_index``
                (those of one clip consecutive, clips in order): the visual part then runs once per clip.
            targets: B dicts (one per caption); ``size`` = unpadded input ``(h, w)``; optional
                ``valid_indices`` picks one annotated frame per clip right after the backbone (A2D/JHMDB).

        Returns:
            ``pred_logits [B, T, Q, K]``, ``pred_boxes [B, T, Q, 4]`` (cxcywh, normalised),
            ``pred_masks [B, T, Q, Hp/4, Wp/4]``; ``aux_outputs`` (one dict per earlier decoder
            layer) if aux loss; in eval mode ``reference_points [B, T, Q, 2]``. B counts captions.

        The forward is :meth:`forward_visual` (everything that does not depend on the captions)
        followed by :meth:`forward_heads`; inference calls the two separately to share the first
        among all expressions of a clip.
        """
        if not isinstance(samples, NestedTensor):
            samples = nested_tensor_from_videos_list(samples)
        if samples.tensors.ndim != 5:
            raise ValueError(f"expected clips [B, T, 3, H, W], got samples {tuple(samples.tensors.shape)}")
        b = samples.tensors.shape[0]
        if len(captions) != len(targets):
            raise ValueError(f"expected a target per caption, got {len(captions)} captions and {len(targets)} targets")
        if targets and "clip_index" in targets[0]:
            counts = captions_per_clip([target["clip_index"] for target in targets], b)
            if "valid_indices" in targets[0]:
                raise ValueError("clips shared by several captions (clip_index) cannot pick frames (valid_indices)")
            return self.forward_heads(self.forward_visual(samples).repeat_clips(counts), captions, targets)
        if b != len(captions):
            raise ValueError(
                f"expected clips [B, T, 3, H, W] with B captions and B targets; got samples "
                f"{tuple(samples.tensors.shape)}, {len(captions)} captions, {len(targets)} targets"
            )
        return self.forward_heads(self.forward_visual(samples, targets), captions, targets)

    def forward_visual(self, samples: NestedTensor | list[Tensor], targets: list[dict] | None = None) -> VisualFeatures:
        """The caption-independent part of the forward: backbone, positions, input projections and, in
        eval mode, the start of the pixel decoder's finest stage.

        Args:
            samples: as in :meth:`forward`.
            targets: only ``valid_indices`` is read (one frame per clip is kept after the backbone);
                ``None`` keeps every frame.

        Returns:
            :class:`VisualFeatures` of the B clips.
        """
        if not isinstance(samples, NestedTensor):
            samples = nested_tensor_from_videos_list(samples)
        b = samples.tensors.shape[0]
        features, pos, image_mask = self.backbone(samples)
        t = samples.tensors.shape[1]
        if targets and "valid_indices" in targets[0]:
            frame_index = torch.tensor(
                [i * t + int(target["valid_indices"]) for i, target in enumerate(targets)], device=image_mask.device
            )
            features = [NestedTensor(f.tensors.index_select(0, frame_index), f.mask.index_select(0, frame_index)) for f in features]
            pos = [p.index_select(0, frame_index) for p in pos]
            image_mask = image_mask.index_select(0, frame_index)
            t = 1

        srcs, masks, poses = [], [], []
        for level, (feature, pos_l) in enumerate(zip(features[-NUM_BACKBONE_LEVELS:], pos[-NUM_BACKBONE_LEVELS:])):
            srcs.append(self.input_proj[level](feature.tensors))
            masks.append(feature.mask)
            poses.append(pos_l)
        # stride-64 level from the raw res5 feature (not the fused one), mask from the image mask (as in the original)
        src = self.input_proj[NUM_BACKBONE_LEVELS](features[-1].tensors)
        mask = resize_mask(image_mask, src.shape[-2:])
        poses.append(self.backbone[1](NestedTensor(src, mask)).to(src.dtype))
        srcs.append(src)
        masks.append(mask)
        finest_visual = None if self.training else self.pixel_decoder.forward_visual(features, pos, t)
        return VisualFeatures(features, pos, srcs, masks, poses, num_clips=b, num_frames=t, finest_visual=finest_visual)

    def forward_heads(
        self, visual: VisualFeatures, captions: list[str], targets: list[dict], *, aux_outputs: bool | None = None
    ) -> dict:
        """Everything after :meth:`forward_visual`: text encoder, early fusion, transformer, heads, masks.

        Args:
            visual: features of B clips (:meth:`VisualFeatures.repeat_clips` shares one clip among captions).
            captions: B referring expressions; targets: B dicts with ``size`` (unpadded input ``(h, w)``).
            aux_outputs: also return the earlier decoder layers' predictions (default: ``self.aux_loss``).
                Inference passes ``False``: it reads only the last layer, and the masks of the others
                are then not computed.

        Returns:
            the outputs of :meth:`forward`.
        """
        if aux_outputs is None:
            aux_outputs = self.aux_loss
        b, t = visual.num_clips, visual.num_frames
        if b != len(captions) or b != len(targets):
            raise ValueError(f"expected {b} captions and targets for {b} clips, got {len(captions)} and {len(targets)}")
        features, pos = visual.features, visual.positions
        device = visual.masks[0].device
        text_word_features, text_sentence_features = self.forward_text(captions, device=device)
        text_pos = self.text_pos(text_word_features).permute(2, 0, 1)  # [S, B, C]
        words, text_mask = text_word_features.decompose()
        words = words.permute(1, 0, 2)  # [S, B, C]

        srcs = [self._fuse(src, b, t, words, text_mask, text_pos) for src in visual.srcs]
        masks, poses = visual.masks, visual.poses

        query_content = text_sentence_features[:, None, None, :].expand(-1, t, self.num_queries, -1)  # [B, T, Q, C]
        hs, memory, init_reference, inter_references = self.transformer(
            srcs, query_content, masks, poses, self.query_embed.weight
        )

        outputs_classes, outputs_coords = [], []
        for lvl in range(hs.shape[0]):
            reference = inverse_sigmoid(init_reference if lvl == 0 else inter_references[lvl - 1])
            outputs_classes.append(self.class_embed[lvl](hs[lvl]))
            delta = self.bbox_embed[lvl](hs[lvl])  # [B*T, Q, 4]
            if reference.shape[-1] == 4:
                delta = delta + reference
            else:
                delta = torch.cat([delta[..., :2] + reference, delta[..., 2:]], -1)
            outputs_coords.append(delta.sigmoid())
        num_layers = hs.shape[0]
        outputs_class = torch.stack(outputs_classes).reshape(num_layers, b, t, self.num_queries, -1)  # [L, B, T, Q, K]
        outputs_coord = torch.stack(outputs_coords).reshape(num_layers, b, t, self.num_queries, 4)  # [L, B, T, Q, 4]

        mask_features = self.pixel_decoder(
            features, text_word_features, pos, memory, num_frames=t, finest_visual=visual.finest_visual
        )
        mask_features = mask_features.reshape(b, t, *mask_features.shape[1:])  # [B, T, C, h, w]
        sizes = torch.stack([torch.as_tensor(target["size"], device=mask_features.device) for target in targets])  # [B, 2]
        outputs_masks = []
        for lvl in range(0 if aux_outputs else num_layers - 1, num_layers):
            params = self.controller(hs[lvl]).reshape(b, t * self.num_queries, -1)  # [B, T*Q, P]
            references = inter_references[lvl, ..., :2].reshape(b, t * self.num_queries, 2)  # [B, T*Q, 2]
            masks_lvl = self.mask_head(mask_features, params, references, sizes)  # [B, T*Q, h, w]
            outputs_masks.append(masks_lvl.reshape(b, t, self.num_queries, *masks_lvl.shape[-2:]))

        out = {"pred_logits": outputs_class[-1], "pred_boxes": outputs_coord[-1], "pred_masks": outputs_masks[-1]}
        if aux_outputs:
            out["aux_outputs"] = [
                {"pred_logits": c, "pred_boxes": d, "pred_masks": m}
                for c, d, m in zip(outputs_class[:-1], outputs_coord[:-1], outputs_masks[:-1])
            ]
        if not self.training:
            # the reference points that went into the last decoder layer, for visualisation
            out["reference_points"] = inter_references[-2, :, :, :2].reshape(b, t, self.num_queries, 2)
        return out
