"""The MeViS launchers (scripts/dist_train_mevis.sh, scripts/dist_test_mevis.sh) with stubbed Python, as
tests/test_scripts.py runs the others: what they pass to main.py and inference_mevis.py."""
from __future__ import annotations

from tests.test_scripts import option, parsed_calls, workspace  # noqa: F401  (fixture)


def test_training_with_and_without_weights(workspace):  # noqa: F811
    weights = workspace.file("pretrained/r50.pth")
    ((entry, args, launcher),) = parsed_calls(*workspace.run("./scripts/dist_train_mevis.sh out/mevis pretrained/r50.pth "
                                                             "--mevis_path other/mevis", STUB_CUDA_DEVICES="2"))
    assert entry == "main.py" and option(launcher, "--nproc_per_node") == "2"
    assert (args.dataset_file, args.binary, args.epochs, args.lr_drop, args.accum_iter) == ("mevis", True, 6, [3, 5], 4)
    assert args.pretrained_weights == str(weights) and args.resume == "auto"
    assert args.output_dir == str(workspace.cwd / "out" / "mevis") and args.mevis_path == "other/mevis"
    ((_, scratch, _),) = parsed_calls(*workspace.run("./scripts/dist_train_mevis.sh out/mevis --backbone resnet101"))
    assert scratch.pretrained_weights is None and scratch.backbone == "resnet101"
    joint, calls = workspace.run("./scripts/dist_train_mevis.sh out/joint --dataset_file mevis_ytvos")
    ((_, joint_args, _),) = parsed_calls(joint, calls)
    assert joint_args.dataset_file == "mevis_ytvos"


def test_valid_u_by_default_and_valid_on_request(workspace):  # noqa: F811
    weights = workspace.file("out/mevis/checkpoint.pth")
    ((entry, args, launcher),) = parsed_calls(*workspace.run(
        "./scripts/dist_test_mevis.sh out/mevis out/mevis/checkpoint.pth", GPUS="4"))
    assert entry == "inference_mevis.py" and launcher == []
    assert (args.split, args.resume, args.ngpu, args.dataset_file) == ("valid_u", str(weights), 4, "mevis")
    ((_, valid, _),) = parsed_calls(*workspace.run(
        "./scripts/dist_test_mevis.sh out/mevis out/mevis/checkpoint.pth --split valid"))
    assert valid.split == "valid"
    process, calls = workspace.run("./scripts/dist_test_mevis.sh out/mevis missing.pth")
    assert process.returncode == 1 and not calls and "weights file missing.pth does not exist" in process.stderr
