"""util/checkpoint.py on small synthetic modules and temporary files."""
from __future__ import annotations

import argparse
import json
import logging
import pickle
from collections import OrderedDict

import pytest
import torch
from torch import nn

from opts import get_args_parser
from tests.golden import REFERENCE_DIR
from util.checkpoint import (
    MAX_LISTED_KEYS,
    CheckpointMismatchError,
    DamagedCheckpointError,
    UnsafeCheckpointError,
    infer_model_options,
    load_checkpoint,
    load_model_state,
    load_resnet_imagenet_weights,
    load_trained_state,
    load_weights_file,
    model_state_from_checkpoint,
    save_checkpoint,
    save_weights_file,
    tied_key_groups,
    torchvision_weights_file,
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
    }
    counter = {"backbone.0.body.bn1.num_batches_tracked": torch.tensor(0)}  # kept, and ignored where no module has it
    wrapped = OrderedDict((f"module.{key}", value) for key, value in {**state, **stale, **counter}.items())
    wrapped._metadata = OrderedDict([("", {"version": 1}), ("module", {"version": 1}), ("module.norm", {"version": 2})])
    checkpoint = {"model": wrapped, "epoch": 3, "args": argparse.Namespace(lr=1e-4)}

    with caplog.at_level(logging.INFO, logger="util.checkpoint"):
        converted = model_state_from_checkpoint(checkpoint, source="c.pth")
    assert list(converted) == [*state, *counter]
    assert "dropped 4 checkpoint keys in c.pth" in caplog.text
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
    import torchvision
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


def test_batchnorm_step_counters_load_where_the_model_has_them_and_are_never_required(caplog):
    """--backbone_from_scratch has ordinary BatchNorm: its statistics and step counters load (a resumed run
    continues the counter), quietly; a model without counters (FrozenBatchNorm2d) ignores them, and a
    checkpoint without them (the original's) loads too."""
    source = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    source.train()
    for _ in range(3):
        source(torch.rand(2, 3, 8, 8) * 3)
    with caplog.at_level(logging.DEBUG, logger="util.checkpoint"):
        state = model_state_from_checkpoint({"model": source.state_dict()}, source="from_scratch.pth")
    assert caplog.text == ""
    target = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    report = load_model_state(target, state, strict=True)
    assert report.missing_keys == () and report.unexpected_keys == ()
    torch.testing.assert_close(target[1].running_mean, source[1].running_mean)
    torch.testing.assert_close(target[1].running_var, source[1].running_var)
    assert target[1].num_batches_tracked.item() == 3

    from models.backbone import FrozenBatchNorm2d

    frozen = nn.Sequential(nn.Conv2d(3, 4, 3), FrozenBatchNorm2d(4))
    assert load_model_state(frozen, state, strict=True).complete
    torch.testing.assert_close(frozen[1].running_var, source[1].running_var)
    without_counter = {key: value for key, value in state.items() if not key.endswith("num_batches_tracked")}
    assert load_model_state(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), without_counter).complete
    del state["1.running_var"]
    with pytest.raises(CheckpointMismatchError, match=r"1 missing keys[\s\S]*1\.running_var"):
        load_model_state(target, state, strict=True)


# ---------------------------------------------------------------------------------------------
# load_trained_state: the mismatch error names the options to pass
class TextModel(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.text_encoder = nn.Linear(3, width)
        self.head = nn.Linear(3, 2)


def test_mismatch_names_the_text_encoder_and_keeps_the_key_lists():
    saved = get_args_parser().parse_args([])
    args = get_args_parser().parse_args(["--text_encoder", "weights/small-roberta"])
    with pytest.raises(CheckpointMismatchError) as error:
        load_trained_state(TextModel(5), TextModel(4).state_dict(), args, saved_options=saved, source="trained.pth")
    message = str(error.value)
    assert "2 shape mismatches" in message and "text_encoder.weight: checkpoint [4, 3] vs model [5, 3]" in message
    assert message.endswith("Its text encoder does not fit --text_encoder weights/small-roberta (it was trained "
                            "with --text_encoder roberta-base).")
    assert set(error.value.keys) == {"text_encoder.weight", "text_encoder.bias"}


def test_mismatch_without_stored_options_or_differences_is_the_plain_key_list():
    args = get_args_parser().parse_args([])
    for saved, state in ((None, TextModel(4).state_dict()), (args, {"head.weight": torch.zeros(2, 3)})):
        with pytest.raises(CheckpointMismatchError) as error:
            load_trained_state(TextModel(5), state, args, saved_options=saved, source="trained.pth")
        assert "trained with" not in str(error.value) and "does not match the model" in str(error.value)


def roberta_like_state(layers: int, width: int, vocabulary: int) -> dict[str, torch.Tensor]:
    state = {"text_encoder.embeddings.word_embeddings.weight": torch.zeros(vocabulary, width)}
    state.update({f"text_encoder.encoder.layer.{i}.output.dense.weight": torch.zeros(width, 2) for i in range(layers)})
    return state


class RobertaLike(nn.Module):
    """Holds the keys describe_text_encoder reads, for a text encoder of the given size."""

    def __init__(self, layers: int, width: int, vocabulary: int):
        super().__init__()
        self.text_encoder = nn.Module()
        self.text_encoder.embeddings = nn.Module()
        self.text_encoder.embeddings.word_embeddings = nn.Embedding(vocabulary, width)
        self.text_encoder.encoder = nn.Module()
        self.text_encoder.encoder.layer = nn.ModuleList(nn.Module() for _ in range(layers))
        for block in self.text_encoder.encoder.layer:
            block.output = nn.Module()
            block.output.dense = nn.Linear(2, width, bias=False)


def test_a_bare_state_dict_whose_text_encoder_does_not_fit_is_described_by_size():
    args = get_args_parser().parse_args(["--text_encoder", "weights/roberta-base"])
    with pytest.raises(CheckpointMismatchError) as error:
        load_trained_state(RobertaLike(12, 768, 50265), roberta_like_state(1, 768, 954), args, saved_options=None,
                           source="bare.pth")
    assert str(error.value).endswith(
        "Its text encoder (1 layers, width 768, vocabulary 954) is not the one of --text_encoder weights/roberta-base "
        "(12 layers, width 768, vocabulary 50265): pass the text encoder it was trained with.")


# ---------------------------------------------------------------------------------------------
# torchvision weights in the torch hub cache
class FakeWeights:
    """Stands for a torchvision WeightsEnum member: only ``url`` is read."""

    url = "https://example.invalid/models/resnet18-f37072fd.pth"

    def __str__(self) -> str:
        return "ResNet18_Weights.IMAGENET1K_V1"


def test_cached_weights_are_found_without_downloading(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("must not download"))
    cached = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"weights")
    assert torchvision_weights_file(FakeWeights(), download=True) == cached


def test_missing_weights_are_downloaded_into_the_cache_with_their_hash(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    calls = []

    def download(url, destination, hash_prefix=None, progress=True):
        calls.append((url, destination, hash_prefix))
        with open(destination, "wb") as file:
            file.write(b"weights")

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    path = torchvision_weights_file(FakeWeights(), download=True)
    assert path == tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth" and path.read_bytes() == b"weights"
    assert calls == [(FakeWeights.url, str(path), "f37072fd")]


def test_missing_weights_offline_name_the_file_the_directory_and_the_alternatives(tmp_path, monkeypatch):
    import urllib.error

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(url, destination, hash_prefix=None, progress=True):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    directory = tmp_path / "hub" / "checkpoints"
    for download in (True, False):
        with pytest.raises(FileNotFoundError) as error:
            torchvision_weights_file(FakeWeights(), download=download)
        message = str(error.value)
        assert "resnet18-f37072fd.pth (ResNet18_Weights.IMAGENET1K_V1" in message and f"not in {directory}" in message
        assert "--backbone_pretrained FILE" in message and "--backbone_from_scratch" in message
        assert ("Temporary failure in name resolution" in message) == download
    assert not any(directory.iterdir())



# ---------------------------------------------------------------------------------------------
# damaged files name the file and the damage
def test_a_truncated_zip_checkpoint_is_named(tmp_path):
    path = tmp_path / "checkpoint.pth"
    save_checkpoint({"model": {"w": torch.randn(100, 100)}}, path)
    path.write_bytes(path.read_bytes()[:20000])
    with pytest.raises(DamagedCheckpointError, match=rf"^checkpoint {path} \(20000 bytes\) is truncated or corrupted: "
                                                    r"it is a zip-format checkpoint without its closing index"):
        load_checkpoint(path)


@pytest.mark.parametrize("fraction", [0.001, 0.01, 0.3, 0.6, 0.99])
def test_a_truncated_legacy_checkpoint_is_named_wherever_it_is_cut(tmp_path, fraction):
    """The original's legacy format: depending on where the file ends, torch.load fails with EOFError,
    struct.error ("unpack requires a buffer of 2 bytes"), an unpickling error or a RuntimeError."""
    path = tmp_path / "original.pth"
    torch.save({"model": {"w": torch.randn(50, 50)}, "args": argparse.Namespace(lr=1e-4, backbone="resnet50")}, path,
               _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(DamagedCheckpointError, match=rf"^checkpoint {path} \(\d+ bytes\) is truncated or corrupted"):
        load_checkpoint(path)


def test_an_empty_checkpoint_is_named(tmp_path):
    path = tmp_path / "empty.pth"
    path.touch()
    with pytest.raises(DamagedCheckpointError, match=r"empty.pth \(0 bytes\) is truncated or corrupted: it is empty"):
        load_checkpoint(path)


# ---------------------------------------------------------------------------------------------
# safetensors weights files: tied tensors stored once
class TiedHeads(nn.Module):
    """Two names for one head, as the box-refinement heads of ReferFormer."""

    def __init__(self):
        super().__init__()
        self.decoder = nn.Module()
        self.bbox_embed = nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2)])
        self.decoder.bbox_embed = self.bbox_embed
        self.other = nn.Linear(2, 3)


def test_weights_file_stores_tied_tensors_once_and_gives_back_every_name(tmp_path):
    from safetensors import safe_open

    model = TiedHeads()
    save_weights_file(model, tmp_path / "model.safetensors")
    with safe_open(tmp_path / "model.safetensors", framework="pt") as file:
        stored = set(file.keys())
    assert stored == {"bbox_embed.0.weight", "bbox_embed.0.bias", "bbox_embed.1.weight", "bbox_embed.1.bias",
                      "other.weight", "other.bias"}
    state = load_weights_file(tmp_path / "model.safetensors")
    assert state.keys() == model.state_dict().keys()
    assert state["decoder.bbox_embed.1.weight"] is state["bbox_embed.1.weight"]
    target = TiedHeads()
    load_model_state(target, state)
    assert target.decoder.bbox_embed[1].weight is target.bbox_embed[1].weight
    for key, value in model.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def test_a_damaged_weights_file_is_named(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header")
    with pytest.raises(DamagedCheckpointError, match=rf"^weights file {path} \(\d+ bytes\) is truncated"):
        load_weights_file(path)


# ---------------------------------------------------------------------------------------------
# model options read off a bare state dict
# What every key schema of tests/golden/keys was made with (tests/golden/README.md): the original's defaults
# plus --with_box_refine --binary.
GOLDEN_SCHEMA_OPTIONS = {
    "hidden_dim": 256, "num_feature_levels": 4, "enc_layers": 4, "dec_layers": 4, "dim_feedforward": 2048,
    "nheads": 8, "enc_n_points": 4, "dec_n_points": 4, "num_queries": 5, "with_box_refine": True, "mask_dim": 256,
    "controller_layers": 3, "dynamic_mask_channels": 8, "rel_coord": True, "binary": True, "dataset_file": "ytvos",
    "backbone_from_scratch": False,
}
KEY_SCHEMAS = ["resnet50", "resnet101", "swin_t_p4w7", "swin_s_p4w7", "swin_b_p4w7", "swin_l_p4w7",
               "video_swin_t_p4w7", "video_swin_s_p4w7", "video_swin_b_p4w7"]


def schema_state(backbone: str) -> dict[str, torch.Tensor]:
    """Every key of the full-size model with its shape, as tensors without memory."""
    keys = json.loads((REFERENCE_DIR / "keys" / f"{backbone}.json").read_text())
    return {key: torch.empty(shape, device="meta") for key, shape in keys.items()}


@pytest.mark.parametrize("backbone", KEY_SCHEMAS)
def test_the_options_of_every_released_architecture_are_read_off_its_keys(backbone):
    options = infer_model_options(schema_state(backbone), run_options=get_args_parser().parse_args([]))
    assert options == {"backbone": backbone, **GOLDEN_SCHEMA_OPTIONS}


def test_non_default_options_of_a_small_model_are_read_off_its_keys():
    from models import build_model
    from models.text_encoder import load_tokenizer, text_encoder_from_config
    from tests.golden import TOKENIZER_DIR, load_case

    chosen = {"backbone": "resnet18", "backbone_from_scratch": True, "hidden_dim": 32, "num_feature_levels": 4,
              "enc_layers": 1, "dec_layers": 3, "dim_feedforward": 48, "nheads": 4, "enc_n_points": 2,
              "dec_n_points": 3, "num_queries": 2, "with_box_refine": False, "mask_dim": 16, "controller_layers": 4,
              "dynamic_mask_channels": 6, "rel_coord": False, "binary": False, "dataset_file": "ref_shapes"}
    flags = ["--backbone", "resnet18", "--backbone_from_scratch", "--hidden_dim", "32", "--enc_layers", "1",
             "--dec_layers", "3", "--dim_feedforward", "48", "--nheads", "4", "--enc_n_points", "2", "--dec_n_points",
             "3", "--num_queries", "2", "--mask_dim", "16", "--controller_layers", "4", "--dynamic_mask_channels", "6",
             "--no_rel_coord", "--dataset_file", "ref_shapes"]
    text_encoder = text_encoder_from_config(load_case("model_eval_r50.pt")["text_encoder_config"])
    model, _, _ = build_model(get_args_parser().parse_args(flags), tokenizer=load_tokenizer(str(TOKENIZER_DIR)),
                              text_encoder=text_encoder)
    # the run's --nheads splits heads x points; the run's dataset (ytvos, 65 classes) does not fit 5 classes
    run = get_args_parser().parse_args(["--nheads", "4"])
    # 193 controller outputs over 16 mask channels fit two heads without relative coordinates
    with pytest.raises(ValueError, match=r"the controller predicts 193 parameters per query, which fit these "
                                         r"dynamic mask heads over 16 mask channels: controller_layers 8, "
                                         r"dynamic_mask_channels 4, rel_coord False; controller_layers 4, "
                                         r"dynamic_mask_channels 6, rel_coord False. Pass the checkpoint's "
                                         r"--controller_layers"):
        infer_model_options(model.state_dict(), run_options=run)
    run = get_args_parser().parse_args(["--nheads", "4", "--controller_layers", "4"])
    assert infer_model_options(model.state_dict(), run_options=run) == chosen


def test_a_state_dict_of_no_known_backbone_or_not_of_referformer_is_named():
    state = {key: value for key, value in schema_state("resnet50").items() if ".layer4.2." not in key}
    with pytest.raises(ValueError, match=r"the backbone weights of bare.pth are none of the known backbones"):
        infer_model_options(state, run_options=get_args_parser().parse_args([]), source="bare.pth")
    with pytest.raises(ValueError, match=r"bare.pth is not a ReferFormer state dict: it has no "
                                         r"transformer.level_embed"):
        infer_model_options({"fc.weight": torch.zeros(2, 2)}, run_options=get_args_parser().parse_args([]),
                            source="bare.pth")


def test_heads_times_points_that_the_run_heads_do_not_divide_ask_for_nheads():
    with pytest.raises(ValueError, match=r"heads x sampling points = 32, which --nheads 6 does not divide; pass the "
                                         r"--nheads it was trained with"):
        infer_model_options(schema_state("resnet50"), run_options=get_args_parser().parse_args(["--nheads", "6"]),
                            source="bare.pth")
