"""Locating the release's checkpoints (a folder or the Hub cache) and reading its config pkl."""

from __future__ import annotations

import collections
import errno
import importlib
import os
import pickle
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from _tiny_release import make_release
from talkinghead.errors import CheckpointError
from talkinghead.methods.ditto import checkpoints as ck
from talkinghead.methods.ditto.checkpoints import (
    AUX_MODELS,
    ReleaseCheckpoints,
    load_release_config,
    resolve_checkpoints,
)
from talkinghead.models.registry import OFFICIAL_NETWORKS

hub = pytest.importorskip("huggingface_hub")
from huggingface_hub.errors import LocalEntryNotFoundError  # noqa: E402

DOWNLOAD_HINT = "talkinghead download --dir ./checkpoints"


# -- layout --


def test_complete_release(tmp_path):
    root = make_release(tmp_path / "checkpoints", onnx=True)
    c = resolve_checkpoints(root)
    assert c.root == root and c.missing() == []
    assert c.config == root / "ditto_cfg" / "v0.4_hubert_cfg_pytorch.pkl"
    assert set(c.models) == set(OFFICIAL_NETWORKS)
    assert c.model("lmdm") == root / "ditto_pytorch/models/lmdm_v0.4_hubert.pth"
    assert c.model("stitch_network") == root / "ditto_pytorch/models/stitch_network.pth"
    assert c.aux_models["insightface_det"] == root / "ditto_pytorch/aux_models/det_10g.onnx"
    assert c.aux_models["landmark478"].name == "face_landmarker.task"
    assert c.aux_models["hubert"].name == "hubert_streaming_fix_kv.onnx"
    assert sorted(c.onnx) == ["decoder", "lmdm_v0.4_hubert"]
    assert c.data_root == root / "ditto_pytorch"
    with pytest.raises(KeyError, match="unknown network"):
        c.model("vae")


def test_data_root_or_models_dir_given(tmp_path):
    root = make_release(tmp_path / "ck")
    assert ReleaseCheckpoints.from_root(root / "ditto_pytorch").root == root
    assert ReleaseCheckpoints.from_root(root / "ditto_pytorch" / "models").root == root
    assert ReleaseCheckpoints.from_root(root).onnx == {}


def test_missing_files_are_named(tmp_path):
    root = make_release(tmp_path / "ck", aux=False, skip=("ditto_pytorch/models/decoder.pth",))
    with pytest.raises(CheckpointError) as err:
        resolve_checkpoints(root)
    msg = str(err.value)
    assert "\n" not in msg
    assert "ditto_pytorch/models/decoder.pth" in msg and "det_10g.onnx" in msg
    assert f"talkinghead download --dir {root}" in msg
    c = resolve_checkpoints(root, strict=False)
    assert root / "ditto_pytorch/models/decoder.pth" in c.missing()
    assert c.missing(include_aux=False) == [root / "ditto_pytorch/models/decoder.pth"]


def test_path_that_does_not_exist(tmp_path):
    with pytest.raises(CheckpointError, match=r"not found.*talkinghead download --dir"):
        resolve_checkpoints(tmp_path / "nope")


# -- the Hub --


class FakeHub:
    """Stands in for huggingface_hub.snapshot_download; records its calls."""

    def __init__(self, *, cached: Path | None = None, download_to: Path | None = None, error=None):
        self.cached, self.download_to, self.error = cached, download_to, error
        self.calls: list[dict] = []

    def __call__(self, repo_id, **kwargs):
        self.calls.append({"repo_id": repo_id, **kwargs})
        if kwargs.get("local_files_only"):
            if self.cached is None:
                raise LocalEntryNotFoundError("Cannot find an appropriate cached snapshot folder")
            return str(self.cached)
        if self.error is not None:
            raise self.error
        make_release(self.download_to)
        return str(self.download_to)


def test_hub_cache_is_used_offline_first(tmp_path, monkeypatch):
    fake = FakeHub(cached=make_release(tmp_path / "snap"))
    monkeypatch.setattr(hub, "snapshot_download", fake)
    c = resolve_checkpoints()
    assert c.root == tmp_path / "snap"
    assert len(fake.calls) == 1 and fake.calls[0]["local_files_only"] is True


def test_hub_download_fetches_only_what_is_needed(tmp_path, monkeypatch):
    fake = FakeHub(download_to=tmp_path / "snap")
    monkeypatch.setattr(hub, "snapshot_download", fake)
    c = resolve_checkpoints()
    assert c.root == tmp_path / "snap" and c.missing() == []
    assert [call.get("local_files_only", False) for call in fake.calls] == [True, False]
    download = fake.calls[1]
    assert download["repo_id"] == "digital-avatar/ditto-talkinghead"
    assert sorted(download["allow_patterns"]) == ["ditto_cfg/**", "ditto_pytorch/**"]

    fake.calls.clear()
    resolve_checkpoints(repo_id="someone/fork", revision="v1")
    assert {call["repo_id"] for call in fake.calls} == {"someone/fork"}
    assert {call["revision"] for call in fake.calls} == {"v1"}


def test_incomplete_cache_triggers_download(tmp_path, monkeypatch):
    partial = make_release(tmp_path / "old", skip=("ditto_pytorch/models/decoder.pth",))
    fake = FakeHub(cached=partial, download_to=tmp_path / "new")
    monkeypatch.setattr(hub, "snapshot_download", fake)
    assert resolve_checkpoints().root == tmp_path / "new"
    # Downloading off: the partial copy for a lax caller, a one-line error for a strict one.
    assert resolve_checkpoints(download=False, strict=False).root == partial
    with pytest.raises(CheckpointError, match=r"incomplete copy \(1 file\(s\) missing\)"):
        resolve_checkpoints(download=False)


def offline_errors() -> list[BaseException]:
    errors: list[BaseException] = [
        # What snapshot_download raises when the Hub cannot be reached and nothing is cached.
        LocalEntryNotFoundError(
            "An error happened while trying to locate the files on the Hub, and we cannot find "
            "the appropriate snapshot folder.\nPlease check your internet connection."
        ),
        ConnectionError("Network is unreachable"),
    ]
    try:
        import httpx

        errors.append(httpx.ConnectError("[Errno 101] Network is unreachable"))
    except ImportError:
        pass
    return errors


@pytest.mark.parametrize("error", offline_errors(), ids=lambda e: type(e).__name__)
def test_offline_and_nothing_local(monkeypatch, error):
    monkeypatch.setattr(hub, "snapshot_download", FakeHub(error=error))
    with pytest.raises(CheckpointError) as err:
        resolve_checkpoints()
    msg = str(err.value)
    assert "\n" not in msg
    assert DOWNLOAD_HINT in msg
    assert "--checkpoints ./checkpoints" in msg
    assert type(error).__name__ in msg


def test_no_download_requested(monkeypatch):
    fake = FakeHub()
    monkeypatch.setattr(hub, "snapshot_download", fake)
    with pytest.raises(CheckpointError, match="downloading is off"):
        resolve_checkpoints(download=False)
    assert all(call["local_files_only"] for call in fake.calls)


def test_without_huggingface_hub(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import now fails
    with pytest.raises(CheckpointError, match=r"pip install 'talkinghead\[hub\]'.*download --dir"):
        resolve_checkpoints()
    with pytest.raises(CheckpointError, match=r"cannot download.*pip install 'talkinghead\[hub\]'"):
        ck.download_release(tmp_path)


# -- revisions, the real hub's cache lookup, download errors --


def test_download_command():
    assert ck.download_command() == "talkinghead download --dir ./checkpoints"
    assert ck.download_command("/a b") == "talkinghead download --dir '/a b'"
    assert (
        ck.download_command("ck", revision=ck.DEFAULT_REVISION) == "talkinghead download --dir ck"
    )
    assert ck.download_command("ck", revision="v2") == "talkinghead download --dir ck --revision v2"


def test_default_revision_is_pinned(tmp_path, monkeypatch):
    assert re.fullmatch(r"[0-9a-f]{40}", ck.DEFAULT_REVISION)  # a commit, not a movable branch
    fake = FakeHub(download_to=tmp_path / "snap")
    monkeypatch.setattr(hub, "snapshot_download", fake)
    resolve_checkpoints()
    assert [call["revision"] for call in fake.calls] == [ck.DEFAULT_REVISION] * 2
    assert all(
        call["allow_patterns"] == ["ditto_pytorch/**", "ditto_cfg/**"] for call in fake.calls
    )


def test_patterns_select_the_pytorch_release():
    # The release's top level, as listed on the Hub; the hub's own filter decides what is fetched.
    repo_files = [
        ".gitattributes",
        "README.md",
        f"ditto_cfg/{ck.CONFIG_NAME}",
        "ditto_cfg/v0.4_hubert_cfg_trt.pkl",
        "ditto_onnx/decoder.onnx",
        "ditto_trt_Ampere_Plus/decoder_fp16.engine",
        *(f"ditto_pytorch/models/{s.checkpoint_name}" for s in OFFICIAL_NETWORKS.values()),
        *(f"ditto_pytorch/aux_models/{name}" for name in AUX_MODELS.values()),
    ]
    from huggingface_hub.utils import filter_repo_objects

    selected = set(filter_repo_objects(repo_files, allow_patterns=list(ck.HUB_PATTERNS)))
    assert selected == {f for f in repo_files if f.startswith(("ditto_pytorch/", "ditto_cfg/"))}


def hub_cache(cache: Path, commit: str, ref: str | None = None) -> Path:
    """The Hugging Face cache layout: a snapshot folder per commit, refs/<branch or tag> -> commit."""
    repo = cache / "models--digital-avatar--ditto-talkinghead"
    snap = make_release(repo / "snapshots" / commit)
    if ref is not None:
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return snap


def test_real_hub_finds_the_pinned_revision_in_the_cache(tmp_path):
    # No mock: huggingface_hub's own offline lookup of the cache layout.
    cache = tmp_path / "hub"
    snap = hub_cache(cache, ck.DEFAULT_REVISION)
    assert resolve_checkpoints(cache_dir=cache, download=False).root == snap
    other = "0123456789abcdef0123456789abcdef01234567"
    tagged = hub_cache(cache, other, ref="v2")
    assert resolve_checkpoints(cache_dir=cache, revision="v2", download=False).root == tagged
    assert resolve_checkpoints(cache_dir=cache, revision=other, download=False).root == tagged
    with pytest.raises(
        CheckpointError, match=r"downloading is off \(digital-avatar/ditto-talkinghead@v3\)"
    ):
        resolve_checkpoints(cache_dir=cache, revision="v3", download=False)


def test_revision_does_not_apply_to_a_folder(tmp_path):
    root = make_release(tmp_path / "ck")
    with pytest.raises(CheckpointError, match="local checkpoint directory has no revisions"):
        resolve_checkpoints(root, revision="v2")


def test_from_pretrained_passes_revision_and_cache(tmp_path, monkeypatch):
    from _tiny_release import build_tiny_release
    from talkinghead.methods.ditto.pipeline import DittoPipeline

    fake = FakeHub(cached=build_tiny_release(tmp_path / "snap"))
    monkeypatch.setattr(hub, "snapshot_download", fake)
    pipe = DittoPipeline.from_pretrained(
        revision="v2", cache_dir=tmp_path / "hub", local_files_only=True, cache=False
    )
    assert pipe.models.identity == str(tmp_path / "snap")
    assert fake.calls == [
        {
            "repo_id": "digital-avatar/ditto-talkinghead",
            "revision": "v2",
            "cache_dir": str(tmp_path / "hub"),
            "allow_patterns": ["ditto_pytorch/**", "ditto_cfg/**"],
            "local_files_only": True,
        }
    ]
    # Not cached, and local_files_only: an error, never a download.
    fake.cached, fake.calls = None, []
    with pytest.raises(CheckpointError, match="downloading is off"):
        DittoPipeline.from_pretrained(local_files_only=True)
    assert fake.calls and all(call["local_files_only"] for call in fake.calls)


def hub_http_error(cls: type[Exception], message: str) -> Exception:
    """A hub HTTP error as huggingface_hub raises it; hub >= 1 requires the HTTP response."""
    try:
        return cls(message)
    except TypeError:
        for name in ("httpx2", "httpx"):
            try:
                http = importlib.import_module(name)
            except ImportError:
                continue
            request = http.Request("GET", "https://huggingface.co/api/models/x/revision/nope")
            return cls(message, response=http.Response(404, request=request))
        raise


def download_errors() -> list:
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    full = OSError(errno.ENOSPC, "No space left on device")
    return [
        pytest.param(
            hub_http_error(RevisionNotFoundError, "404 Client Error. Revision Not Found"),
            r"revision 'nope' does not exist in digital-avatar/ditto-talkinghead",
            id="unknown-revision",
        ),
        pytest.param(
            hub_http_error(RepositoryNotFoundError, "401 Client Error. Repository Not Found"),
            r"does not exist on the model hub or is not accessible.*HF_TOKEN",
            id="unknown-repo",
        ),
        pytest.param(full, r"no space left on the disk of .*about 2\.3 GB.*--dir", id="disk-full"),
        pytest.param(  # errno lost on the way, only the text is left
            OSError("[Errno 28] No space left on device: 'blobs/x.incomplete'"),
            r"no space left on the disk",
            id="disk-full-text",
        ),
        *(
            pytest.param(
                e, r"model hub cannot be reached.*" + type(e).__name__, id=type(e).__name__
            )
            for e in offline_errors()
        ),
    ]


@pytest.mark.parametrize(("error", "needle"), download_errors())
def test_download_errors_are_one_line(tmp_path, monkeypatch, error, needle):
    monkeypatch.setattr(hub, "snapshot_download", FakeHub(error=error))
    with pytest.raises(CheckpointError) as err:
        ck.download_release(tmp_path / "ck", revision="nope")
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("downloading digital-avatar/ditto-talkinghead@nope failed: ")
    assert re.search(needle, msg), msg


def test_download_of_a_revision_without_the_pytorch_release(tmp_path, monkeypatch):
    def old_revision(repo_id, **kwargs):
        (Path(kwargs["local_dir"]) / "ditto_cfg").mkdir(parents=True)
        (Path(kwargs["local_dir"]) / "ditto_cfg" / "v0.4_hubert_cfg_trt.pkl").write_bytes(b"x")
        return kwargs["local_dir"]

    monkeypatch.setattr(hub, "snapshot_download", old_revision)
    with pytest.raises(CheckpointError, match=r"@v0: \d+ file\(s\) missing .*decoder\.pth"):
        ck.download_release(tmp_path / "ck", revision="v0")


# -- the config pkl --


def release_like_config() -> dict:
    """The structure the release's parse_cfg reads, with representative values."""

    def net(path: str, **extra) -> dict:
        return {"model_path": path, "device": "cuda", **extra}

    return {
        "base_cfg": {
            "insightface_det_cfg": net("aux_models/det_10g.onnx", force_ori_type=False),
            "landmark106_cfg": net("aux_models/2d106det.onnx", force_ori_type=False),
            "landmark203_cfg": net("aux_models/landmark203.onnx", force_ori_type=False),
            "landmark478_cfg": {
                "blaze_face_model_path": "",
                "face_mesh_model_path": "",
                "task_path": "aux_models/face_landmarker.task",
                "device": "cuda",
                "force_ori_type": True,
            },
            "appearance_extractor_cfg": net("models/appearance_extractor.pth"),
            "motion_extractor_cfg": net("models/motion_extractor.pth"),
            "stitch_network_cfg": net("models/stitch_network.pth"),
            "warp_network_cfg": net("models/warp_network.pth"),
            "decoder_cfg": net("models/decoder.pth"),
            "hubert_cfg": net("aux_models/hubert_streaming_fix_kv.onnx", force_ori_type=False),
        },
        "audio2motion_cfg": {
            **net("models/lmdm_v0.4_hubert.pth"),
            "motion_feat_dim": 265,
            "audio_feat_dim": 1024 + 35,
            "seq_frames": 80,
            "use_emo": True,
            "use_sc": True,
            "use_eye_open": True,
            "use_eye_ball": True,
            "w2f_type": "hubert",
        },
        "default_kwargs": collections.OrderedDict(
            crop_scale=2.3,
            crop_vy_ratio=-0.125,
            sampling_timesteps=50,
            overlap_v2=10,
            fade_out_keys=("exp",),
            emo=np.int64(4),
            v_min_max_for_clip=np.linspace(-1, 1, 2 * 265, dtype=np.float32).reshape(2, 265),
            eye_ids={1, 2},
            raw=b"\x00\xff",
        ),
    }


def assert_same(a, b):
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype
    else:
        assert a == b and type(a) is type(b)


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_config_roundtrip(tmp_path, protocol):
    cfg = release_like_config()
    pkl = tmp_path / "cfg.pkl"
    pkl.write_bytes(pickle.dumps(cfg, protocol=protocol))
    assert_same(cfg, load_release_config(pkl))


def test_config_written_by_numpy2(tmp_path):
    # numpy 2 names its core module numpy._core; either numpy must read both spellings.
    data = pickle.dumps({**release_like_config(), "x": np.arange(4.0)}, protocol=2)
    data = data.replace(b"numpy.core.multiarray", b"numpy._core.multiarray")
    pkl = tmp_path / "cfg.pkl"
    pkl.write_bytes(data)
    np.testing.assert_array_equal(load_release_config(pkl)["x"], np.arange(4.0))


def test_config_paths_resolved_against_data_root(tmp_path):
    root = make_release(tmp_path / "ck")
    pkl = root / "ditto_cfg" / ck.CONFIG_NAME
    pkl.write_bytes(pickle.dumps(release_like_config()))
    c = ReleaseCheckpoints.from_root(root)
    cfg = load_release_config(c.config, data_root=c.data_root)
    base = cfg["base_cfg"]
    assert base["decoder_cfg"]["model_path"] == str(c.model("decoder"))
    assert base["insightface_det_cfg"]["model_path"] == str(c.aux_models["insightface_det"])
    assert base["landmark478_cfg"]["task_path"] == str(c.aux_models["landmark478"])
    assert base["landmark478_cfg"]["face_mesh_model_path"] == ""  # empty stays empty
    assert cfg["audio2motion_cfg"]["model_path"] == str(c.model("lmdm"))
    # Every path in the release's config names a file our layout knows.
    known = {str(p) for p in [*c.models.values(), *c.aux_models.values()]}
    paths = [s.get("model_path") or s.get("task_path") for s in base.values()]
    assert set(paths) | {cfg["audio2motion_cfg"]["model_path"]} <= known


class Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


@pytest.mark.parametrize(
    "payload",
    [
        {"base_cfg": {}, "audio2motion_cfg": {}, "default_kwargs": {"x": Exploit()}},
        {"base_cfg": {}, "audio2motion_cfg": {}, "default_kwargs": {"f": getattr}},
        {"base_cfg": {}, "audio2motion_cfg": {}, "default_kwargs": {"p": Path("/")}},
    ],
    ids=["os.system", "builtins.getattr", "pathlib"],
)
def test_config_refuses_code(tmp_path, monkeypatch, payload):
    monkeypatch.chdir(tmp_path)
    pkl = tmp_path / "evil.pkl"
    pkl.write_bytes(pickle.dumps(payload))
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_release_config(pkl)
    assert not (tmp_path / "pwned").exists()


def test_config_bad_files(tmp_path):
    with pytest.raises(CheckpointError, match="cannot read"):
        load_release_config(tmp_path / "absent.pkl")
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(pickle.dumps(release_like_config())[:50])
    with pytest.raises(CheckpointError, match=r"a damaged config pickle .*a truncated download"):
        load_release_config(bad)
    bad.write_bytes(b"")
    with pytest.raises(CheckpointError, match="the config file is empty"):
        load_release_config(bad)
    bad.write_bytes(b"xyz: a YAML file, say")
    with pytest.raises(
        CheckpointError, match=r"not a pickle \(a ditto_cfg/\*.pkl config is one\)$"
    ):
        load_release_config(bad)
    bad.write_bytes(pickle.dumps(release_like_config(), protocol=0))  # old protocols still load
    load_release_config(bad)
    bad.write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(CheckpointError, match="expected a dict"):
        load_release_config(bad)
    bad.write_bytes(pickle.dumps({"base_cfg": {}}))
    with pytest.raises(CheckpointError, match="audio2motion_cfg, default_kwargs"):
        load_release_config(bad)


# -- the size sidecar --


def test_the_sidecar_is_read_beside_the_checkpoints(tmp_path):
    assert ck.read_sidecar(tmp_path) == {}  # none: the release's sizes
    sidecar = tmp_path / ck.SIDECAR_NAME
    sidecar.write_text('{"lmdm": {"latent_dim": 32}}')
    assert ck.read_sidecar(tmp_path) == {"lmdm": {"latent_dim": 32}}
    sidecar.write_text('{"vocoder": {}}')
    with pytest.raises(CheckpointError, match="unknown network kinds"):
        ck.read_sidecar(tmp_path)
    sidecar.write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable network configuration"):
        ck.read_sidecar(tmp_path)
    sidecar.write_text('{"conditions": {"use_emo": false}}')
    assert ck.read_sidecar(tmp_path) == {"conditions": {"use_emo": False}}
    for bad in ('{"conditions": {"use_emotion": false}}', '{"conditions": {"use_sc": 0}}'):
        sidecar.write_text(bad)
        with pytest.raises(CheckpointError, match="'conditions' must map use_emo"):
            ck.read_sidecar(tmp_path)


def test_the_condition_layout_is_the_configs_then_the_sidecars(tmp_path):
    import pickle

    release = {k: k != "use_lmk" for k in ck.CONDITION_FLAGS}
    local = ck.ReleaseCheckpoints.from_root(tmp_path)
    assert ck.motion_condition_flags(local) == release  # no pkl, no sidecar: the release's
    local.config.parent.mkdir(parents=True)
    a2m = {"use_emo": True, "use_sc": False, "use_eye_open": True, "use_eye_ball": True}
    cfg = {"base_cfg": {}, "audio2motion_cfg": a2m, "default_kwargs": {}}
    local.config.write_bytes(pickle.dumps(cfg))
    assert ck.motion_condition_flags(local) == {**release, "use_sc": False}  # as the release reads
    models = local.models["lmdm"].parent
    models.mkdir(parents=True)
    (models / ck.SIDECAR_NAME).write_text('{"conditions": {"use_emo": false, "use_sc": true}}')
    assert ck.motion_condition_flags(local) == {**release, "use_emo": False}  # a trained model
