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
