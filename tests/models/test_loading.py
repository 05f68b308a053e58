"""Checkpoint loading: containers, DDP prefixes, and clear errors for wrong files."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch

from talkinghead.errors import CheckpointError
from talkinghead.models import OFFICIAL_NETWORKS, load_official, save_official


def test_registry_names_match_manifest(conformance) -> None:
    nets = conformance.manifest["networks"]
    assert set(OFFICIAL_NETWORKS) == set(nets)
    for kind, spec in OFFICIAL_NETWORKS.items():
        assert spec.checkpoint_name == nets[kind]["checkpoint_name"]
        assert spec.container == nets[kind]["container"]["format"]


def test_module_prefix_is_stripped(conformance, tmp_path) -> None:
    sd = conformance.state_dict("stitch_network")
    path = tmp_path / "stitch_network.pth"
    torch.save({"retarget_shoulder": OrderedDict((f"module.{k}", v) for k, v in sd.items())}, path)
    net = load_official("stitch_network", path)
    assert not net.training
    for key, value in net.state_dict().items():
        assert torch.equal(value, sd[key])


def test_wrong_network_names_file_and_keys(conformance, tmp_path) -> None:
    path = tmp_path / "decoder.pth"
    torch.save(conformance.state_dict("stitch_network"), path)
    with pytest.raises(CheckpointError) as err:
        load_official("decoder", path)
    msg = str(err.value)
    assert (
        str(path) in msg
        and "missing keys" in msg
        and "unexpected keys" in msg
        and "mlp.0.weight" in msg
    )


def test_wrong_container_is_reported(conformance, tmp_path) -> None:
    path = tmp_path / "stitch_network.pth"
    torch.save(
        conformance.state_dict("stitch_network"), path
    )  # raw, not {"retarget_shoulder": ...}
    with pytest.raises(CheckpointError, match="retarget_shoulder"):
        load_official("stitch_network", path)


def test_shape_mismatch_is_reported(conformance, tmp_path) -> None:
    sd = OrderedDict(conformance.state_dict("stitch_network"))
    sd["mlp.0.weight"] = torch.zeros(128, 10)
    path = tmp_path / "stitch_network.pth"
    torch.save({"retarget_shoulder": sd}, path)
    with pytest.raises(CheckpointError, match=r"mlp\.0\.weight"):
        load_official("stitch_network", path)


def test_missing_and_corrupt_files(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_official("decoder", tmp_path / "nope.pth")
    bad = tmp_path / "decoder.pth"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable"):
        load_official("decoder", bad)
    with pytest.raises(CheckpointError, match="unknown network kind"):
        load_official("vae", bad)


def test_save_official_round_trip(conformance, tmp_path) -> None:
    net = load_official("stitch_network", conformance.checkpoint("stitch_network"))
    path = tmp_path / "out" / "stitch_network.pth"
    save_official(net, "stitch_network", path)
    assert set(torch.load(path, weights_only=True)) == {"retarget_shoulder"}
    again = load_official("stitch_network", path)
    for a, b in zip(net.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)


class _NotAllowed:  # a class the weights-only unpickler refuses
    pass


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("empty", "the file is empty; an interrupted download or copy?"),
        ("text", "neither torch.save's zip archive nor a pickle"),
        ("video", "neither torch.save's zip archive nor a pickle"),
        ("truncated", "a damaged zip archive; a truncated download or copy?"),
        ("object", "it holds a Python object, "),
        ("pickle", "a pickle, but not one written by torch.save"),
        ("pickle4", "the safe weights-only loader cannot read its pickle"),
    ],
)
def test_an_unreadable_file_says_why_in_a_few_words(tmp_path, kind, reason) -> None:
    """torch's text for these is a paragraph that advises weights_only=False, with escape
    codes: wrong for a video given as a checkpoint, or a half-downloaded one."""
    import pickle
    import warnings

    from talkinghead.models.loading import read_checkpoint

    path = tmp_path / "model.pth"
    if kind == "text":
        path.write_text("hi\n")
    elif kind == "video":
        path.write_bytes(b"\x00\x00\x00\x20ftypisom" + bytes(64))
    elif kind.startswith("pickle"):
        path.write_bytes(pickle.dumps({"x": 1}, protocol=4 if kind == "pickle4" else 2))
    elif kind in ("object", "truncated"):
        obj = _NotAllowed() if kind == "object" else {"w": torch.ones(64)}
        torch.save({"w": torch.ones(2), "o": obj}, path)
        if kind == "truncated":
            path.write_bytes(path.read_bytes()[:200])
    else:
        path.write_bytes(b"")
    with pytest.raises(CheckpointError) as info, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's note on pickle protocol 4
        read_checkpoint(path)
    message = str(info.value)
    assert message.startswith(f"{path}: not a readable PyTorch checkpoint: {reason}")
    assert kind != "object" or "_NotAllowed, that the safe weights-only loader refuses" in message
    assert "\n" not in message and "\x1b" not in message and "weights_only=False" not in message
