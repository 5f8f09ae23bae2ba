"""Run one golden reference case with this implementation and save its outputs.

    python tools/run_reference_case.py CASE.pt OUT.pt [--tokenizer DIR] [--threads N] [--repeat N]

The case format is described in ``tests/golden/README.md``. The model is built from the
case's stored options (``opts``) and tiny text-encoder config, every weight is filled by the
README's deterministic rule, and the case's inputs are run in the case's mode. ``OUT.pt`` holds
``{"outputs": ...}`` with the same keys and layout as the case's outputs (plus ``intermediates``
for model cases, and ``timing`` with ``--repeat``). Any case in that format works: other seeds,
clip lengths, sizes, batch sizes, captions or options.
"""
from __future__ import annotations

import argparse
import sys
import time
import zlib
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from models import build_model  # noqa: E402
from models.ms_deform_attn import MSDeformAttn, ms_deform_attn_core_pytorch  # noqa: E402
from models.postprocessors import (  # noqa: E402
    A2DSentencesPostProcess,
    PostProcess,
    PostProcessSegm,
    binarize_mask_logits,
    merge_object_probs,
    select_best_query,
    upsample_query_masks,
)
from models.text_encoder import load_tokenizer, text_encoder_from_config  # noqa: E402
from opts import get_args_parser  # noqa: E402
from util.nested_tensor import NestedTensor  # noqa: E402

DEFAULT_TOKENIZER = ROOT / "tests" / "golden" / "tokenizer"
# Gradients stored for a train case that names none (the README's list); large ones as first rows.
DEFAULT_GRAD_NAMES = (
    "backbone.0.body.layer2.0.conv1.weight", "backbone.0.body.layer4.2.conv3.weight", "input_proj.0.0.weight",
    "input_proj.3.0.weight", "resizer.fc.weight", "fusion_module.multihead_attn.in_proj_weight",
    "transformer.level_embed", "transformer.reference_points.weight",
    "transformer.encoder.layers.0.self_attn.sampling_offsets.weight", "transformer.encoder.layers.3.linear1.weight",
    "transformer.decoder.layers.0.self_attn.in_proj_weight", "transformer.decoder.layers.3.cross_attn.value_proj.weight",
    "query_embed.weight", "class_embed.3.weight", "class_embed.0.bias", "bbox_embed.0.layers.2.weight",
    "bbox_embed.3.layers.0.weight", "pixel_decoder.adapter_1.weight", "pixel_decoder.cross_attn_1.self_attn.in_proj_weight",
    "pixel_decoder.cross_attn_4.multihead_attn.out_proj.weight", "pixel_decoder.layer_4.norm.weight",
    "pixel_decoder.mask_features.weight", "controller.layers.2.weight", "controller.layers.0.bias",
)
GRAD_ELEMENT_BUDGET = 20000
# Intermediates larger than this are stored compacted, as in the golden files.
COMPACT_ABOVE = {"model_eval": 50000, "model_train": 5000}
COMPACT_HEAD = 2048


# ----------------------------------------------------------------------------- weights
def rule_value(name: str, tensor: Tensor) -> Tensor:
    """The README's deterministic value for one state-dict entry."""
    generator = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    shape = tensor.shape
    if name.endswith("num_batches_tracked"):
        return torch.zeros_like(tensor)
    if name.endswith("running_var"):
        return 1 + 0.1 * torch.rand(shape, generator=generator)
    if name.endswith("running_mean"):
        return 0.1 * torch.randn(shape, generator=generator)
    if tensor.ndim == 1 and name.endswith("weight"):
        return 1 + 0.1 * torch.randn(shape, generator=generator)
    return 0.02 * torch.randn(shape, generator=generator)


def fill_by_rule(module: nn.Module) -> None:
    """Fill every floating state-dict entry by the rule; keys in sorted order, first write wins for tied tensors."""
    state = module.state_dict(keep_vars=True)
    written: set[int] = set()
    with torch.no_grad():
        for name in sorted(state):
            tensor = state[name]
            if not tensor.is_floating_point() or id(tensor) in written:
                continue
            tensor.copy_(rule_value(name, tensor))
            written.add(id(tensor))


# ----------------------------------------------------------------------------- helpers
def build_args(opts: dict) -> argparse.Namespace:
    args = get_args_parser().parse_args([])
    vars(args).update(opts)
    return args


def compact(tensor: Tensor) -> dict:
    t = tensor.detach().double()
    entry = {
        "compacted": True,
        "shape": list(tensor.shape),
        "head": tensor.detach().reshape(-1)[:COMPACT_HEAD].clone(),
        "stats": torch.stack([t.sum(), t.abs().sum(), (t * t).sum(), t.min(), t.max()]),
    }
    if tensor.ndim >= 3:
        entry["chan_mean"] = t.mean(dim=tuple(range(2, tensor.ndim)))
    return entry


def detach_tree(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: detach_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [detach_tree(v) for v in value]
    return value


def record_intermediates(model: nn.Module) -> tuple[dict[str, Tensor], Callable[[], None]]:
    """Forward hooks that capture the intermediates named in the README; returns (store, remove)."""
    store: dict[str, Tensor] = {}
    handles = []

    def on_backbone(_module, _inputs, output):
        features, positions, _ = output
        for level, (feature, pos) in enumerate(zip(features, positions)):
            store[f"backbone.feature.{level}"] = feature.tensors
            store[f"backbone.mask.{level}"] = feature.mask
            store[f"backbone.pos.{level}"] = pos

    def on_text(_module, _inputs, output):
        store["text_encoder.last_hidden_state"] = output.last_hidden_state
        store["text_encoder.pooler_output"] = output.pooler_output

    def on_resizer(_module, inputs, output):
        key = "resizer.word_features" if inputs[0].ndim == 3 else "resizer.sentence_features"
        store[key] = output

    def before_transformer(_module, inputs):
        srcs, tgt, masks, poses, _ = inputs
        for level, (src, mask, pos) in enumerate(zip(srcs, masks, poses)):
            store[f"transformer_in.src.{level}"] = src
            store[f"transformer_in.mask.{level}"] = mask
            store[f"transformer_in.pos.{level}"] = pos
        store["transformer_in.tgt"] = tgt

    def on_encoder(_module, _inputs, output):
        store["transformer.encoder_memory"] = output

    def on_transformer(_module, _inputs, output):
        hs, memory_features, init_reference, inter_references = output
        store["transformer.hs"] = hs
        for level, memory in enumerate(memory_features):
            store[f"transformer.memory_features.{level}"] = memory
        store["transformer.init_reference"] = init_reference
        store["transformer.inter_references"] = inter_references

    def on_pixel_decoder(_module, _inputs, output):
        store["pixel_decoder.mask_features"] = output

    def on_controller(_module, _inputs, output):
        store["controller.params_last_layer"] = output  # the last call is the last decoder layer

    handles.append(model.backbone.register_forward_hook(on_backbone))
    handles.append(model.text_encoder.register_forward_hook(on_text))
    handles.append(model.resizer.register_forward_hook(on_resizer))
    handles.append(model.transformer.register_forward_pre_hook(before_transformer))
    handles.append(model.transformer.encoder.register_forward_hook(on_encoder))
    handles.append(model.transformer.register_forward_hook(on_transformer))
    handles.append(model.pixel_decoder.register_forward_hook(on_pixel_decoder))
    handles.append(model.controller.register_forward_hook(on_controller))

    def remove() -> None:
        for handle in handles:
            handle.remove()

    return store, remove


def finish_intermediates(store: dict[str, Tensor], compact_above: int) -> dict:
    out = {}
    for name, tensor in store.items():
        tensor = tensor.detach()
        out[name] = compact(tensor) if tensor.numel() > compact_above else tensor.clone()
    return out


def build_reference_model(case: dict, tokenizer_dir: Path):
    args = build_args(case["opts"])
    text_encoder = text_encoder_from_config(case["text_encoder_config"])
    model, criterion, postprocessors = build_model(args, text_encoder=text_encoder, tokenizer=load_tokenizer(str(tokenizer_dir)))
    fill_by_rule(model)
    return args, model, criterion


def model_inputs(case: dict) -> tuple[NestedTensor, list[str], list[dict]]:
    inputs = case["inputs"]
    samples = NestedTensor(inputs["samples_tensors"].clone(), inputs["samples_mask"].clone())
    targets = [{k: v.clone() if isinstance(v, Tensor) else v for k, v in t.items()} for t in inputs["targets"]]
    return samples, list(inputs["captions"]), targets


# ----------------------------------------------------------------------------- kinds
def run_model_eval(case: dict, tokenizer_dir: Path, repeat: int) -> dict:
    _, model, _ = build_reference_model(case, tokenizer_dir)
    model.eval()
    store, remove = record_intermediates(model)
    with torch.no_grad():
        outputs = model(*model_inputs(case))
    remove()
    result: dict[str, Any] = {
        "outputs": detach_tree(outputs),
        "intermediates": finish_intermediates(store, COMPACT_ABOVE["model_eval"]),
    }
    if repeat > 0:
        times = []
        with torch.no_grad():
            for _ in range(repeat):
                inputs = model_inputs(case)
                start = time.perf_counter()
                model(*inputs)
                times.append(time.perf_counter() - start)
        result["timing"] = {"forward_seconds_min": min(times)}
    return result


def _grad_key_and_value(name: str, grad: Tensor) -> tuple[str, Tensor]:
    rows = grad.shape[0] if grad.ndim else 1
    row_numel = grad[0].numel() if grad.ndim else 1
    if grad.numel() <= GRAD_ELEMENT_BUDGET or grad.ndim == 0:
        return name, grad
    n = max(1, GRAD_ELEMENT_BUDGET // row_numel)
    return (f"{name}[:{n}]", grad[:n]) if n < rows else (name, grad)


def run_model_train(case: dict, tokenizer_dir: Path) -> dict:
    _, model, criterion = build_reference_model(case, tokenizer_dir)
    model.train()
    # The golden train case switches every dropout off, including the hard-coded ones.
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        elif isinstance(module, nn.MultiheadAttention):
            module.dropout = 0.0
    store, remove = record_intermediates(model)
    samples, captions, targets = model_inputs(case)
    outputs = model(samples, captions, targets)
    remove()
    with torch.no_grad():
        indices = [criterion.matcher({k: v for k, v in outputs.items() if k != "aux_outputs"}, targets)]
        indices += [criterion.matcher(aux, targets) for aux in outputs.get("aux_outputs", [])]
    losses = criterion(outputs, targets)
    weight_dict = criterion.weight_dict
    total = sum(losses[k] * weight_dict[k] for k in losses if k in weight_dict)
    total.backward()

    params = dict(model.named_parameters(remove_duplicate=False))
    expected = case.get("outputs", {}).get("grads")
    grads = {}
    if expected:
        for key in expected:
            name, _, rows = key.partition("[:")
            grad = params[name].grad
            grads[key] = grad[: int(rows[:-1])].clone() if rows else grad.clone()
    else:
        for name in DEFAULT_GRAD_NAMES:
            if name in params and params[name].grad is not None:
                key, value = _grad_key_and_value(name, params[name].grad)
                grads[key] = value.clone()
    grad_norms = {
        name: float(p.grad.double().norm()) for name, p in params.items() if p.grad is not None
    }
    return {
        "outputs": {
            "model_outputs": detach_tree(outputs),
            "matcher_indices": [[[src.clone(), tgt.clone()] for src, tgt in layer] for layer in indices],
            "losses": {k: v.detach() for k, v in losses.items()},
            "weight_dict": dict(weight_dict),
            "total_loss": total.detach(),
            "grads": grads,
            "grad_norms": grad_norms,
            "trainable_param_names": [name for name, p in model.named_parameters() if p.requires_grad],
        },
        "intermediates": finish_intermediates(store, COMPACT_ABOVE["model_train"]),
    }


def run_msdeformattn(case: dict) -> dict:
    inputs, opts = case["inputs"], case["opts"]
    module = MSDeformAttn(opts["d_model"], opts["n_levels"], opts["n_heads"], opts["n_points"])
    fill_by_rule(module)
    outputs: dict[str, Any] = {}
    for part in ("enc", "dec"):
        data = inputs[part]
        query = data["query"].clone().requires_grad_(True)
        reference = data["reference_points"].clone().requires_grad_(True)
        flatten = data["input_flatten"].clone().requires_grad_(True)
        module.zero_grad(set_to_none=True)
        output, locations, weights = module(
            query, reference, flatten, inputs["spatial_shapes"], inputs["level_start_index"], inputs["padding_mask"]
        )
        (output * data["grad_output"]).sum().backward()
        grad_params = {}
        for name, p in module.named_parameters():
            if p.ndim > 1:
                grad_params[f"{name}[:32]"] = p.grad[:32].clone()
            else:
                grad_params[name] = p.grad.clone()
        outputs[part] = {
            "output": output.detach(), "sampling_locations": locations.detach(), "attention_weights": weights.detach(),
            "grad_query": query.grad, "grad_input_flatten": flatten.grad, "grad_reference_points": reference.grad,
            "grad_params": grad_params,
        }
    core = inputs["core"]
    value = core["value"].clone().requires_grad_(True)
    locations = core["sampling_locations"].clone().requires_grad_(True)
    weights = core["attention_weights"].clone().requires_grad_(True)
    output = ms_deform_attn_core_pytorch(value, inputs["spatial_shapes"], locations, weights)
    (output * core["grad_output"]).sum().backward()
    outputs["core"] = {
        "output": output.detach(), "grad_value": value.grad, "grad_sampling_locations": locations.grad,
        "grad_attention_weights": weights.grad,
    }
    return {"outputs": outputs}


def run_keys(case: dict, tokenizer_dir: Path) -> dict:
    args = build_args(case["opts"])
    text_encoder = text_encoder_from_config(case["text_encoder_config"])
    model, _, _ = build_model(args, text_encoder=text_encoder, tokenizer=load_tokenizer(str(tokenizer_dir)))
    return {"outputs": {"keys": {k: list(v.shape) for k, v in model.state_dict().items()}}}


def run_postprocess(case: dict) -> dict:
    """A2D, RefCOCO, Ref-YTVOS and Ref-DAVIS postprocessing of the stored model outputs."""
    inputs = case["inputs"]
    outputs = {key: inputs[key] for key in ("pred_logits", "pred_boxes", "pred_masks")}
    sizes, orig_sizes, threshold = inputs["sizes"], inputs["orig_sizes"], float(inputs["threshold"])
    refcoco = PostProcess()(outputs, orig_sizes)
    refcoco = PostProcessSegm(threshold)(refcoco, outputs, orig_sizes, sizes)
    ytvos, object_probs = [], []
    for clip in range(inputs["pred_logits"].shape[0]):
        query_index, query_scores = select_best_query(inputs["pred_logits"][clip])
        logits = upsample_query_masks(inputs["pred_masks"][clip], query_index, orig_sizes[clip].tolist())
        probs = logits.sigmoid()
        ytvos.append({
            "query_scores": query_scores, "query_index": query_index,
            "masks": binarize_mask_logits(logits, threshold), "probs": probs,
            "logits_chosen": inputs["pred_logits"][clip][:, query_index],
            "boxes_chosen": inputs["pred_boxes"][clip][:, query_index],
        })
        # Ref-DAVIS: the clips play the objects of one video of size orig_sizes[0]
        davis_logits = upsample_query_masks(inputs["pred_masks"][clip], query_index, orig_sizes[0].tolist())
        object_probs.append(davis_logits.sigmoid())
    object_probs = torch.stack(object_probs)  # [n_obj, T, H, W]
    return {"outputs": {
        "a2d": A2DSentencesPostProcess()(outputs, orig_sizes, sizes),
        "refcoco": refcoco,
        "ytvos": ytvos,
        "davis": {"object_probs": object_probs, "label_map": merge_object_probs(object_probs)},
    }}


def run_case(case: dict, tokenizer_dir: Path = DEFAULT_TOKENIZER, repeat: int = 0) -> dict:
    kind = case["kind"]
    if kind == "model_eval":
        return run_model_eval(case, tokenizer_dir, repeat)
    if kind == "model_train":
        return run_model_train(case, tokenizer_dir)
    if kind == "msdeformattn":
        return run_msdeformattn(case)
    if kind == "postprocess":
        return run_postprocess(case)
    if kind == "keys":
        return run_keys(case, tokenizer_dir)
    raise ValueError(f"unknown case kind {kind!r}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("case", type=Path, help="golden case file (.pt)")
    parser.add_argument("out", type=Path, help="where to write {'outputs': ...}")
    parser.add_argument("--tokenizer", type=Path, default=DEFAULT_TOKENIZER, help="tokenizer directory")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--repeat", type=int, default=0, help="eval cases: time N more forwards, store the fastest")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    case = torch.load(args.case, weights_only=True)
    result = run_case(case, args.tokenizer, args.repeat)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(result, args.out)
    print(f"wrote {args.out} ({case['kind']})")


if __name__ == "__main__":
    main()
