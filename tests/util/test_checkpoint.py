"""util/checkpoint.py on small synthetic modules and temporary files."""
from __future__ import annotations

import argparse
import logging
import pickle
from collections import OrderedDict

import pytest
import torch
from torch import nn

from util.checkpoint import (
    MAX_LISTED_KEYS,
    CheckpointMismatchError,
    UnsafeCheckpointError,
    load_checkpoint,
    load_model_state,
    load_resnet_imagenet_weights,
    model_state_from_checkpoint,
    save_checkpoint,
    tied_key_groups,
)


class Opaque:
    """An arbitrary class instance: weights_only loading must refuse it."""

    def __init__(self, value: int):
        self.value = value


class FailsToPickle:
    def __reduce__(self):
        raise RuntimeError("cannot pickle this")


class Decoder(nn.Module):
    def __init__(self, bbox_embed: nn.ModuleList):
        super().__init__()
        self.layer = nn.Linear(3, 3)
        self.bbox_embed = bbox_embed


class Transformer(nn.Module):
    def __init__(self, bbox_embed: nn.ModuleList):
        super().__init__()
        self.decoder = Decoder(bbox_embed)


class TiedModel(nn.Module):
    """Mimics --with_box_refine: ``bbox_embed`` also registered as ``transformer.decoder.bbox_embed``
    (the transformer first, as in ReferFormer), plus a head repeating one module (no box refine)."""

    def __init__(self):
        super().__init__()
        bbox_embed = nn.ModuleList([nn.Linear(3, 4) for _ in range(2)])
        self.transformer = Transformer(bbox_embed)
        shared = nn.Linear(3, 1)
        self.class_embed = nn.ModuleList([shared, shared])
        self.bbox_embed = bbox_embed


def small_model() -> nn.Module:
    return nn.Sequential(OrderedDict(conv=nn.Conv2d(2, 3, 1), norm=nn.GroupNorm(1, 3), head=nn.Linear(3, 2)))


def random_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {key: torch.randn_like(value.float()).to(value.dtype) for key, value in model.state_dict().items()}


# ---------------------------------------------------------------------------------------------
# load_model_state


def test_strict_load_succeeds_and_copies_values():
    model = small_model()
    state = random_state(model)
    report = load_model_state(model, state)
    assert report.complete and report.missing_keys == () and report.unexpected_keys == ()
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key])


def test_mismatch_error_lists_missing_unexpected_and_shapes():
    model = small_model()
    state = random_state(model)
    del state["head.bias"]
    state["head.weight"] = torch.zeros(5, 3)
    state["extra.weight"] = torch.zeros(1)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    with pytest.raises(CheckpointMismatchError) as info:
        load_model_state(model, state, source="/ckpt/x.pth")
    message = str(info.value)
    assert "checkpoint /ckpt/x.pth" in message
    assert "1 missing keys" in message and "head.bias" in message
    assert "1 unexpected keys" in message and "extra.weight" in message
    assert "1 shape mismatches" in message and "head.weight: checkpoint [5, 3] vs model [2, 3]" in message
    assert isinstance(info.value, ValueError)
    # Nothing was loaded: a failed load leaves the model as it was.
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])


def test_mismatch_error_lists_first_twenty_and_counts_the_rest():
    model = nn.ModuleList([nn.Linear(1, 1, bias=False) for _ in range(30)])
    state = {f"{i}.weight": torch.zeros(1, 1) for i in range(5)}
    state.update({f"other.{i}": torch.zeros(1) for i in range(25)})
    with pytest.raises(CheckpointMismatchError) as info:
        load_model_state(model, state)
    message = str(info.value)
    assert message.startswith("state dict does not match the model")
    assert "25 missing keys" in message and "25 unexpected keys" in message
    assert message.count("... and 5 more") == 2
    listed_missing = [line.strip() for line in message.splitlines() if line.strip().endswith(".weight")]
    assert len(listed_missing) == MAX_LISTED_KEYS
    assert "other.19" in message and "other.20" not in message


def test_non_strict_returns_report_but_still_rejects_shape_mismatch():
    model = small_model()
    state = random_state(model)
    del state["conv.bias"]
    state["unused"] = torch.zeros(2)
    report = load_model_state(model, state, strict=False)
    assert report.missing_keys == ("conv.bias",) and report.unexpected_keys == ("unused",)
    assert not report.complete
    assert torch.equal(model.head.weight, state["head.weight"])
    state["head.bias"] = torch.zeros(7)
    with pytest.raises(CheckpointMismatchError, match=r"head\.bias: checkpoint \[7\] vs model \[2\]"):
        load_model_state(model, state, strict=False)


def test_tied_parameters_load_and_stay_tied():
    model = TiedModel()
    assert [keys[0] for keys in tied_key_groups(model)] == [
        "transformer.decoder.bbox_embed.0.weight",
        "transformer.decoder.bbox_embed.0.bias",
        "transformer.decoder.bbox_embed.1.weight",
        "transformer.decoder.bbox_embed.1.bias",
        "class_embed.0.weight",
        "class_embed.0.bias",
    ]
    source = TiedModel()
    for parameter in source.parameters():
        nn.init.normal_(parameter)
    state = {key: value.clone() for key, value in source.state_dict().items()}  # separate tensors, as after torch.load
    assert "transformer.decoder.bbox_embed.1.bias" in state and "bbox_embed.1.bias" in state

    load_model_state(model, state)
    assert model.bbox_embed[1].weight is model.transformer.decoder.bbox_embed[1].weight
    assert torch.equal(model.bbox_embed[1].weight, state["bbox_embed.1.weight"])
    with torch.no_grad():
        model.bbox_embed[0].weight.add_(1.0)
    assert torch.equal(model.transformer.decoder.bbox_embed[0].weight, model.bbox_embed[0].weight)
    assert model.class_embed[0] is model.class_embed[1]


def test_tied_alias_missing_from_checkpoint_is_filled_from_the_other():
    model = TiedModel()
    state = {key: value.clone() + 1 for key, value in TiedModel().state_dict().items()}
    dropped_aliases = ("transformer.decoder.bbox_embed", "class_embed.1")
    state = {key: value for key, value in state.items() if not key.startswith(dropped_aliases)}
    report = load_model_state(model, state)
    assert report.complete
    assert torch.equal(model.transformer.decoder.bbox_embed[0].bias, state["bbox_embed.0.bias"])
    assert torch.equal(model.class_embed[1].weight, state["class_embed.0.weight"])


def test_tied_entries_that_differ_are_rejected():
    model = TiedModel()
    state = {key: value.clone() for key, value in TiedModel().state_dict().items()}
    state["bbox_embed.0.weight"] = state["transformer.decoder.bbox_embed.0.weight"] + 1
    with pytest.raises(CheckpointMismatchError, match="bbox_embed.0.weight != transformer.decoder.bbox_embed.0.weight"):
        load_model_state(model, state, source="bad.pth")


# ---------------------------------------------------------------------------------------------
# model_state_from_checkpoint


def test_model_entry_prefix_and_stale_keys(caplog):
    model = small_model()
    state = random_state(model)
    stale = {
        "text_encoder.embeddings.position_ids": torch.arange(5)[None],
        "text_encoder.embeddings.token_type_ids": torch.zeros(1, 5, dtype=torch.long),
        "total_ops": torch.zeros(1),
        "head.total_params": torch.zeros(1),
        "backbone.0.body.bn1.num_batches_tracked": torch.tensor(0),
    }
    wrapped = OrderedDict((f"module.{key}", value) for key, value in {**state, **stale}.items())
    wrapped._metadata = OrderedDict([("", {"version": 1}), ("module", {"version": 1}), ("module.norm", {"version": 2})])
    checkpoint = {"model": wrapped, "epoch": 3, "args": argparse.Namespace(lr=1e-4)}

    with caplog.at_level(logging.INFO, logger="util.checkpoint"):
        converted = model_state_from_checkpoint(checkpoint, source="c.pth")
    assert list(converted) == list(state)
    assert "dropped 5 stale checkpoint keys in c.pth" in caplog.text
    assert converted._metadata == OrderedDict([("", {"version": 1}), ("norm", {"version": 2})])
    assert load_model_state(model, converted).complete


def test_bare_state_dict_and_partial_prefix():
    state = {"module.a": torch.zeros(1), "b": torch.zeros(1)}
    assert list(model_state_from_checkpoint(state)) == ["module.a", "b"]  # only stripped when every key has it


def test_checkpoint_without_state_dict_is_reported():
    with pytest.raises(ValueError, match=r"no model state dict in x\.pth.*\['epoch', 'optimizer'\]"):
        model_state_from_checkpoint({"optimizer": {}, "epoch": 1}, source="x.pth")


# ---------------------------------------------------------------------------------------------
# load_checkpoint / save_checkpoint


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_namespace_is_allowed_under_weights_only(tmp_path, zip_format):
    model = nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [6, 8])
    checkpoint = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "lr_scheduler": scheduler.state_dict(),
        "epoch": 4,
        "args": argparse.Namespace(lr=1e-4, lr_drop=[6, 8], resume=""),
    }
    path = tmp_path / "checkpoint.pth"
    torch.save(checkpoint, path, _use_new_zipfile_serialization=zip_format)
    loaded = load_checkpoint(path)
    assert loaded["args"] == checkpoint["args"] and loaded["epoch"] == 4
    assert torch.equal(loaded["model"]["weight"], model.weight)
    assert loaded["lr_scheduler"]["milestones"] == {6: 1, 8: 1}


def test_pickled_objects_need_the_opt_out(tmp_path):
    path = tmp_path / "untrusted.pth"
    torch.save({"model": {}, "extra": Opaque(7)}, path)
    with pytest.raises(UnsafeCheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and "Opaque" in message and "weights_only=False" in message
    assert isinstance(info.value, pickle.UnpicklingError)
    assert load_checkpoint(path, weights_only=False)["extra"].value == 7


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.pth"):
        load_checkpoint(tmp_path / "nothing.pth")


def test_save_round_trip_and_overwrite(tmp_path):
    path = tmp_path / "sub" / "checkpoint.pth"
    save_checkpoint({"epoch": 1, "model": {"w": torch.ones(2)}}, path)
    save_checkpoint({"epoch": 2, "model": {"w": torch.zeros(2)}}, path)
    loaded = load_checkpoint(path)
    assert loaded["epoch"] == 2 and torch.equal(loaded["model"]["w"], torch.zeros(2))
    assert sorted(p.name for p in path.parent.iterdir()) == ["checkpoint.pth"]


def test_failed_save_keeps_the_previous_file(tmp_path):
    path = tmp_path / "checkpoint.pth"
    save_checkpoint({"epoch": 1, "model": {"w": torch.ones(1000)}}, path)
    previous = path.read_bytes()
    with pytest.raises(RuntimeError, match="cannot pickle this"):
        # The tensor is written before the object that fails, so the temporary file is partial.
        save_checkpoint({"model": {"w": torch.ones(100_000)}, "broken": FailsToPickle()}, path)
    assert path.read_bytes() == previous
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pth"]


def test_resnet_imagenet_weights_drop_the_classifier(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    from models.backbone import FrozenBatchNorm2d, ResNetBody

    imagenet = torchvision.models.resnet18(weights=None)
    for module in imagenet.modules():
        if isinstance(module, nn.BatchNorm2d):
            nn.init.normal_(module.running_mean)
    path = tmp_path / "resnet18-imagenet.pth"
    torch.save(imagenet.state_dict(), path)  # includes fc.* and num_batches_tracked, as torchvision's files may
    body = ResNetBody(torchvision.models.resnet18(weights=None, norm_layer=FrozenBatchNorm2d))
    load_resnet_imagenet_weights(body, path)
    assert torch.equal(body.layer3[1].bn2.running_mean, imagenet.layer3[1].bn2.running_mean)
    assert torch.equal(body.conv1.weight, imagenet.conv1.weight)


def test_batchnorm_model_loads_strictly_without_its_step_counters():
    """--backbone_from_scratch has ordinary BatchNorm: its counters are dropped, its statistics load."""
    source = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    source.train()
    source(torch.rand(2, 3, 8, 8) * 3)
    state = model_state_from_checkpoint({"model": source.state_dict()})
    assert "1.num_batches_tracked" not in state
    target = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    report = load_model_state(target, state, strict=True)
    assert report.missing_keys == () and report.unexpected_keys == ()
    torch.testing.assert_close(target[1].running_mean, source[1].running_mean)
    torch.testing.assert_close(target[1].running_var, source[1].running_var)
    del state["1.running_var"]
    with pytest.raises(CheckpointMismatchError, match=r"1 missing keys[\s\S]*1\.running_var"):
        load_model_state(target, state, strict=True)
