"""LivePortrait's release loads unchanged: its key names and layout give the same networks as Ditto's."""

from __future__ import annotations

import pytest
import torch

from _tiny_liveportrait import LP_SIZES, build_tiny_liveportrait, tiny_networks
from talkinghead.errors import CheckpointError
from talkinghead.methods.liveportrait.checkpoints import (
    RETARGETING_FILE,
    find_release,
    load_liveportrait,
)
from talkinghead.models import OFFICIAL_NETWORKS, load_official


@pytest.fixture(scope="module")
def releases(tmp_path_factory):
    root = tmp_path_factory.mktemp("lp")
    ditto = tmp_path_factory.mktemp("ditto")
    build_tiny_liveportrait(root, ditto_root=ditto)
    return root, ditto


def test_liveportrait_names_and_ditto_names_give_the_same_outputs(releases) -> None:
    root, ditto = releases
    lp = load_liveportrait(root)
    ours = {
        kind: load_official(
            kind, ditto / "models" / OFFICIAL_NETWORKS[kind].checkpoint_name, **LP_SIZES[kind]
        )
        for kind in (
            "appearance_extractor",
            "motion_extractor",
            "warp_network",
            "decoder",
            "stitch_network",
        )
    }
    g = torch.Generator().manual_seed(0)
    image = torch.rand(2, 3, 64, 64, generator=g)
    kp_s, kp_d = torch.randn(2, 21, 3, generator=g) * 0.3, torch.randn(2, 21, 3, generator=g) * 0.3
    with torch.inference_mode():
        f_s = ours["appearance_extractor"](image)
        assert torch.equal(lp.appearance_extractor(image), f_s)
        for a, b in zip(lp.motion_extractor(image), ours["motion_extractor"](image), strict=True):
            assert torch.equal(a, b)
        warped = ours["warp_network"](f_s, kp_s, kp_d)
        assert torch.equal(lp.warp_network(f_s, kp_s, kp_d), warped)
        assert torch.equal(lp.decoder(warped), ours["decoder"](warped))
        assert torch.equal(lp.stitch_network(kp_s, kp_d), ours["stitch_network"](kp_s, kp_d))


def test_the_retargeting_mlps_load_from_the_stitching_file(releases) -> None:
    root, _ = releases
    lp = load_liveportrait(root)
    expected = tiny_networks()
    for kind in ("eye_retargeting", "lip_retargeting"):
        loaded = getattr(lp, kind).state_dict()
        assert loaded.keys() == expected[kind].state_dict().keys()
        assert all(torch.equal(loaded[k], v) for k, v in expected[kind].state_dict().items())
    assert lp.eye_retargeting.input_size == 66 and lp.lip_retargeting.input_size == 65


def test_any_level_of_the_release_folder_is_found(releases) -> None:
    root, _ = releases
    for where in (root, root / "pretrained_weights", root / "pretrained_weights" / "liveportrait"):
        assert find_release(where).base_models.name == "base_models"


def test_missing_and_wrong_files_are_named(tmp_path) -> None:
    root = build_tiny_liveportrait(tmp_path / "lp")
    retarget = (
        root / "pretrained_weights" / "liveportrait" / "retargeting_models" / RETARGETING_FILE
    )
    obj = torch.load(retarget, weights_only=True)
    del obj["retarget_eye"]
    torch.save(obj, retarget)
    with pytest.raises(CheckpointError, match="retarget_eye"):
        load_liveportrait(root)
    retarget.unlink()
    with pytest.raises(CheckpointError, match=RETARGETING_FILE):
        find_release(root)
    with pytest.raises(CheckpointError, match="no LivePortrait release"):
        find_release(tmp_path)
