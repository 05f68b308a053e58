"""DiffTalk end to end on CPU with tiny presets: data preparation from a clip made of the
example portrait and speech, both training stages (they overfit), progressive generation
at 256 and 512 px, determinism, the training command."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from _conformance import MEDIA_DIR, skip_missing
from _dithead_helpers import save_tiny_wav2vec2
from _extras import needs_packages_of
from talkinghead.errors import TalkingHeadError
from talkinghead.methods.difftalk.checkpoint import load_difftalk, save_component, write_manifest
from talkinghead.methods.difftalk.data import MANIFEST_NAME, DiffTalkDataset, prepare_dataset
from talkinghead.methods.difftalk.features import LANDMARK_POINTS, mask_row
from talkinghead.methods.difftalk.pipeline import (
    DiffTalkConfig,
    DiffTalkGenerator,
    SourceFaces,
    generate_video,
)
from talkinghead.methods.difftalk.train import (
    AutoencoderTrainConfig,
    LdmTrainConfig,
    train_autoencoder,
    train_ldm,
)
from talkinghead.models.difftalk_autoencoder import DiffTalkAutoencoder, autoencoder_preset
from talkinghead.models.difftalk_conditions import DiffTalkConditionConfig
from talkinghead.models.difftalk_unet import DiffTalkLDM, DiffTalkLDMConfig, unet_preset

pytestmark = needs_packages_of("difftalk")

FACE, SPEECH = MEDIA_DIR / "ditto_example_face.jpg", MEDIA_DIR / "ditto_example_speech.wav"
CLIP_FRAMES = 12
RES = 64  # the training tests' resolution: a 16 x 16 latent with f = 4 keeps CPU steps cheap


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """(workdir, 256 px portrait path, RGB portrait, 16 kHz speech)."""
    if not FACE.is_file() or not SPEECH.is_file():
        skip_missing(f"{MEDIA_DIR}")
    from talkinghead.audio.io import load_audio
    from talkinghead.media.source import load_source

    work = tmp_path_factory.mktemp("difftalk")
    face = cv2.resize(load_source(FACE).frames[0], (256, 256), interpolation=cv2.INTER_AREA)
    path = work / "portrait.png"
    cv2.imwrite(str(path), face[..., ::-1])
    return work, path, face, load_audio(SPEECH, 16000)


@pytest.fixture(scope="module")
def videos(media):
    """A 12-frame clip (the portrait under a small affine motion, with speech) and a broken file."""
    import soundfile

    from talkinghead.media.writer import VideoWriter

    work, _, face, speech = media
    d = work / "videos"
    d.mkdir()
    audio = speech[16000 : 16000 + CLIP_FRAMES * 640]
    with VideoWriter(d / "clip.mp4", fps=25, audio=(audio, 16000)) as writer:
        for i in range(CLIP_FRAMES):
            m = cv2.getRotationMatrix2D((128, 128), 2 * np.sin(i / 3), 1 + 0.01 * i)
            m[:, 2] += (i % 4, 0)
            writer.write(cv2.warpAffine(face, m, (256, 256), borderMode=cv2.BORDER_REFLECT))
    (d / "broken.mp4").write_bytes(b"this is not a video")
    wav = work / "speech.wav"  # 0.2 s: five frames at 25 fps
    soundfile.write(wav, speech[32000:35200], 16000)
    return d, wav


@pytest.fixture(scope="module")
def w2v(media):
    return save_tiny_wav2vec2(media[0] / "wav2vec2")


@pytest.fixture(scope="module")
def prepared(media, videos, w2v):
    calls = []
    out = media[0] / "data"
    report = prepare_dataset(
        videos[0],
        out,
        resolution=RES,
        audio_model=str(w2v),
        progress=lambda *a: calls.append(a),
    )
    return out, report, calls


@pytest.fixture(scope="module")
def trained(media, prepared):
    out = media[0] / "ckpt"
    ae = train_autoencoder(
        prepared[0],
        out,
        AutoencoderTrainConfig(
            preset="tiny-f4", steps=10, batch_size=2, lr=1e-3, cache_frames=True
        ),
    )
    ldm = train_ldm(
        prepared[0],
        out,
        LdmTrainConfig(preset="tiny", steps=20, batch_size=4, lr=2e-3, ema=False, grad_clip=1.0),
    )
    return out, ae, ldm


@pytest.fixture(scope="module")
def generator(trained, media, videos):
    models = load_difftalk(trained[0])
    gen = DiffTalkGenerator(models, DiffTalkConfig(steps=3))
    from talkinghead.audio.io import load_audio

    audio = load_audio(videos[1], 16000)
    source, n = gen.prepare_source(media[1], len(audio))
    return gen, source, audio, n


# ---------------------------------------------------------------------------- data


def test_prepare_dataset_writes_the_documented_layout(prepared, videos):
    out, report, calls = prepared
    assert report.prepared == ["clip"] and report.frames == CLIP_FRAMES
    assert list(report.failed) == ["broken.mp4"]
    assert calls[0] == (0, 2) and calls[-1] == (2, 2)
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["resolution"] == RES and manifest["audio"]["feature_dim"] == 32
    assert manifest["clips"] == [{"name": "clip", "frames": CLIP_FRAMES, "fps": 25.0}]
    clip = out / "clips" / "clip"
    assert np.load(clip / "landmarks.npy").shape == (CLIP_FRAMES, 478, 2)
    assert np.load(clip / "audio.npy").shape == (CLIP_FRAMES, 16, 32)
    assert np.load(clip / "crop.npy").shape == (CLIP_FRAMES, 3, 3)
    frames = sorted((clip / "frames").iterdir())
    assert len(frames) == CLIP_FRAMES
    assert cv2.imread(str(frames[0])).shape == (RES, RES, 3)
    # Resumable: a finished clip is kept; other settings are refused.
    (videos[0] / "broken.mp4").rename(videos[0] / "broken.txt")
    try:
        again = prepare_dataset(
            videos[0], out, resolution=RES, audio_model=manifest["audio"]["encoder"]
        )
    finally:
        (videos[0] / "broken.txt").rename(videos[0] / "broken.mp4")
    assert again.skipped == ["clip"] and again.prepared == [] and again.frames == CLIP_FRAMES
    with pytest.raises(TalkingHeadError, match="other settings"):
        prepare_dataset(videos[0], out, resolution=256, audio_model=manifest["audio"]["encoder"])


def test_dataset_items(prepared):
    data = DiffTalkDataset(prepared[0], min_reference_gap=6, seed=3)
    assert len(data) == CLIP_FRAMES
    for idx in (0, 5, 11):
        item = data[idx]
        assert abs(item["reference_index"] - idx) >= 6
        for key in ("image", "masked", "reference"):
            assert item[key].shape == (3, RES, RES)
        assert item["audio"].shape == (17, 16, 32)
        assert item["landmarks"].shape == (len(LANDMARK_POINTS), 2)
        assert item["landmarks"].min() > 0 and item["landmarks"].max() < 1
        row = mask_row(data.clips[0].landmarks[idx])
        assert RES // 3 < row < RES
        assert (item["masked"][:, row:] == -1).all()
        torch.testing.assert_close(item["masked"][:, : row - 1], item["image"][:, : row - 1])
    far = DiffTalkDataset(prepared[0])  # 60 frames: none that far, so the farthest one
    assert far[2]["reference_index"] == CLIP_FRAMES - 1 and far[9]["reference_index"] == 0


# ---------------------------------------------------------------------------- training


def test_tiny_presets_overfit_the_clip(trained):
    out, ae, ldm = trained
    assert np.mean(ae.losses[-3:]) < np.mean(ae.losses[:3])
    assert np.mean(ldm.losses[-5:]) < 0.5 * np.mean(ldm.losses[:5])
    assert {"autoencoder.pt", "ldm.pt", "difftalk.json"} <= {p.name for p in out.iterdir()}
    manifest = json.loads((out / "difftalk.json").read_text())
    assert manifest["resolution"] == RES and manifest["data"]["smooth_radius"] == 8


def test_ldm_checkpoint_holds_the_warmed_up_average(trained, prepared, tmp_path):
    from talkinghead.methods.difftalk.checkpoint import read_component

    ae = trained[0] / "autoencoder.pt"
    for name, ema in (("raw", False), ("ema", True)):
        config = LdmTrainConfig(preset="tiny", steps=1, batch_size=2, ema=ema)
        train_ldm(prepared[0], tmp_path / name, config, autoencoder=ae)
    raw = read_component(tmp_path / "raw" / "ldm.pt", "ldm")
    average = read_component(tmp_path / "ema" / "ldm.pt", "ldm")
    assert average["ema"] and not raw["ema"]
    torch.manual_seed(config.seed)  # the weights training started from
    start = DiffTalkLDM(DiffTalkLDMConfig.from_dict(average["config"])).state_dict()
    # After one update the CompVis warm-up decay is min(0.9999, 2 / 11).
    for k, v in average["state_dict"].items():
        assert torch.equal(v, torch.lerp(start[k], raw["state_dict"][k], 1 - 2 / 11)), k


def test_train_command(trained, prepared, tmp_path):
    from typer.testing import CliRunner

    from talkinghead.cli import app

    args = ["train-difftalk", "--stage", "ldm", str(prepared[0]), str(tmp_path)]
    opts = ["--preset", "tiny", "--steps", "1", "--batch-size", "2", "--no-ema"]
    result = CliRunner().invoke(
        app, [*args, *opts, "--autoencoder", str(trained[0] / "autoencoder.pt")]
    )
    assert result.exit_code == 0, result.output
    assert "ldm.pt" in result.output
    assert {"autoencoder.pt", "ldm.pt", "difftalk.json"} <= {p.name for p in tmp_path.iterdir()}
    bad = CliRunner().invoke(app, [*args, "--preset", "huge", "--overwrite"])
    assert isinstance(bad.exception, TalkingHeadError)
    # a finished stage is not replaced by a rerun: step 40 does not silently become step 1
    again = CliRunner().invoke(app, [*args, *opts])
    assert again.exit_code != 0 and isinstance(again.exception, TalkingHeadError)
    assert "--resume" in str(again.exception) and "--overwrite" in str(again.exception)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    state = payload["train_state"]
    return {**payload["state_dict"], **{f"raw.{k}": v for k, v in state.get("model", {}).items()}}


def test_autoencoder_resume_is_exact_with_the_gan_and_refuses_to_overwrite(prepared, tmp_path):
    """2 steps + resume to 4 == 4 uninterrupted, with the PatchGAN on from step 1."""
    from dataclasses import replace

    config = AutoencoderTrainConfig(
        preset="tiny-f4", steps=4, batch_size=2, lr=1e-3, disc_start=1, cache_frames=True,
        log_every=1,
    )  # fmt: skip
    whole = train_autoencoder(prepared[0], tmp_path / "whole", config)
    part = tmp_path / "part"
    train_autoencoder(prepared[0], part, replace(config, steps=2))
    with pytest.raises(TalkingHeadError, match="exists: pass --resume"):
        train_autoencoder(prepared[0], part, config)
    rest = train_autoencoder(prepared[0], part, replace(config, resume=True))
    assert rest.losses == whole.losses[2:]
    a, b = _weights(tmp_path / "whole" / "autoencoder.pt"), _weights(part / "autoencoder.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    disc = torch.load(part / "autoencoder.pt", weights_only=True)["train_state"]["discriminator"]
    assert disc  # the discriminator was trained and is resumed with the rest
    with pytest.raises(TalkingHeadError, match="already reached step 4"):
        train_autoencoder(prepared[0], part, replace(config, resume=True))
    # the resumed run appends to the loss log of the first
    log = [
        json.loads(x)
        for x in (part / "log_autoencoder" / "train_log.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    assert (part / "state_autoencoder" / "rank_state_0.pt").is_file()
    assert {"loss", "rec", "codebook", "g", "g_weight", "d"} <= set(log[-1])


def test_ldm_resume_is_exact_including_the_ema(trained, prepared, tmp_path):
    from dataclasses import replace

    ae = trained[0] / "autoencoder.pt"
    config = LdmTrainConfig(preset="tiny", steps=4, batch_size=2, lr=1e-3, ema_decay=0.9)
    whole = train_ldm(prepared[0], tmp_path / "whole", config, autoencoder=ae)
    part = tmp_path / "part"
    train_ldm(prepared[0], part, replace(config, steps=2), autoencoder=ae)
    rest = train_ldm(prepared[0], part, replace(config, resume=True), autoencoder=ae)
    assert rest.losses == whole.losses[2:]
    a, b = _weights(tmp_path / "whole" / "ldm.pt"), _weights(part / "ldm.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.load(part / "ldm.pt", weights_only=True)["step"] == 4
    with pytest.raises(TalkingHeadError, match="already reached step 4"):
        train_ldm(prepared[0], part, replace(config, resume=True), autoencoder=ae)
    # --overwrite starts again from step 0
    again = train_ldm(prepared[0], part, replace(config, steps=1, overwrite=True), autoencoder=ae)
    assert again.losses == whole.losses[:1]


@pytest.fixture(scope="module")
def two_process_runs(trained, prepared, tmp_path_factory):
    """Both stages under `accelerate launch` with 2 CPU processes (gloo), in one launch:
    2 steps, then 4 straight, then the 2-step runs resumed to 4 (the straight runs come
    between each split and its resume). The autoencoder's PatchGAN is on from step 1."""
    from _accelerate_launch import launch_commands

    work = tmp_path_factory.mktemp("difftalk_two_process")
    stages = {  # the ldm stage writes its autoencoder next to it: a folder per stage
        "ldm": ["--preset", "tiny", "--autoencoder", str(trained[0] / "autoencoder.pt")],
        "autoencoder": ["--preset", "tiny-f4", "--disc-start", "1"],
    }
    opts = ["--batch-size", "1", "--lr", "1e-3", "--log-every", "1"]
    order = (("split", 2, []), ("straight", 4, []), ("split", 4, ["--resume"]))
    runs = [
        ["train-difftalk", str(prepared[0]), str(work / stage / out), "--stage", stage,
         *opts, *stage_opts, "--steps", str(steps), *extra]
        for out, steps, extra in order
        for stage, stage_opts in stages.items()
    ]  # fmt: skip
    run = launch_commands(runs, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return work


def test_two_process_accelerate_launch_resume_is_exact(two_process_runs, trained, prepared):
    """The ldm stage in 2 processes: 2 steps + resume to 4 == 4 straight, EMA included; the
    loss line is the mean over both ranks."""
    work = two_process_runs / "ldm"
    assert (work / "split" / "state_ldm" / "rank_state_1.pt").is_file()
    a, b = _weights(work / "straight" / "ldm.pt"), _weights(work / "split" / "ldm.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log_file = work / "split" / "log_ldm" / "train_log.jsonl"
    log = [json.loads(x) for x in log_file.read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    # a resume with another number of processes is refused, not silently inexact
    with pytest.raises(TalkingHeadError, match="saved by 2 processes"):
        train_ldm(
            prepared[0], work / "split",
            LdmTrainConfig(preset="tiny", steps=5, batch_size=1, resume=True, device="cpu"),
            autoencoder=trained[0] / "autoencoder.pt",
        )  # fmt: skip


def test_two_process_autoencoder_resume_is_exact(two_process_runs):
    """The autoencoder stage in 2 processes, the PatchGAN on from step 1 (its gradients are
    averaged by hand): 2 steps + resume to 4 == 4 straight, the discriminator's weights
    included."""
    work = two_process_runs / "autoencoder"
    assert (work / "split" / "state_autoencoder" / "rank_state_1.pt").is_file()
    payloads = [
        torch.load(work / d / "autoencoder.pt", map_location="cpu", weights_only=True)
        for d in ("straight", "split")
    ]
    for part in ("state_dict", "discriminator"):
        a, b = (p[part] if part == "state_dict" else p["train_state"][part] for p in payloads)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part
    log_file = work / "split" / "log_autoencoder" / "train_log.jsonl"
    log = [json.loads(x) for x in log_file.read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4] and "d" in log[-1]  # the GAN was on


# ---------------------------------------------------------------------------- generation


def test_generate_video_from_an_image(trained, media, videos):
    from talkinghead.media.source import load_source

    out = generate_video(
        media[1], videos[1], media[0] / "out.mp4", checkpoints=trained[0], seed=0, steps=3
    )
    result = load_source(out)
    assert len(result.frames) == 5 and result.size == (256, 256) and result.fps == 25
    import av

    with av.open(str(out)) as c:
        assert len(c.streams.audio) == 1


def test_generate_video_with_frame_interpolation(trained, media, videos):
    """DiT-Head's stage 3 on DiffTalk: 5 frames at 25 fps become 10 at 50 (the same 0.2 s)."""
    from talkinghead.media.source import load_source

    out = generate_video(
        media[1], videos[1], media[0] / "out50.mp4", checkpoints=trained[0], seed=0, steps=2,
        fps=25, interpolation="flow",
    )  # fmt: skip
    result = load_source(out)
    assert len(result.frames) == 10 and result.fps == 50
    with pytest.raises(TalkingHeadError, match="RIFE weights not found"):
        generate_video(
            media[1], videos[1], media[0] / "x.mp4", checkpoints=trained[0], steps=2,
            interpolation="rife",
        )  # fmt: skip
    assert not (media[0] / "x.mp4").exists()


def test_progressive_inference_uses_the_previous_output(generator, monkeypatch):
    gen, source, audio, n = generator
    seen = []
    render = DiffTalkGenerator.render_frame

    def spy(self, crop, landmarks, reference, *args, **kwargs):
        out = render(self, crop, landmarks, reference, *args, **kwargs)
        seen.append((reference.copy(), out[0].copy()))
        return out

    monkeypatch.setattr(DiffTalkGenerator, "render_frame", spy)
    results = list(gen.frames(source, audio, n, seed=0))
    assert len(results) == len(seen) == n == 5
    np.testing.assert_array_equal(seen[0][0], source.crops[0])
    for i in range(1, n):
        np.testing.assert_array_equal(seen[i][0], seen[i - 1][1])
        np.testing.assert_array_equal(results[i - 1].generated, seen[i - 1][1])
    seen.clear()
    fixed = DiffTalkGenerator(
        gen.models, DiffTalkConfig(steps=3, progressive=False), audio_encoder=gen.audio_encoder()
    )
    list(fixed.frames(source, audio, 3, seed=0))
    assert all(np.array_equal(ref, source.crops[0]) for ref, _ in seen)


def test_sampling_is_deterministic_under_a_seed(generator):
    gen, source, audio, _ = generator
    a = [r.frame for r in gen.frames(source, audio, 2, seed=7)]
    b = [r.frame for r in gen.frames(source, audio, 2, seed=7)]
    c = [r.frame for r in gen.frames(source, audio, 2, seed=8)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))
    # Only the lower face changes: the rest of the frame keeps the source's pixels.
    diff = np.abs(a[0].astype(int) - source.frames[0].astype(int)).sum(-1)
    rows = np.flatnonzero(diff.max(1) > 0)
    assert rows.size and rows.min() > 256 // 3


def _random_checkpoint(directory: Path, preset: str, w2v: Path) -> None:
    torch.manual_seed(0)
    ae = DiffTalkAutoencoder(autoencoder_preset(preset))
    cond = DiffTalkConditionConfig()
    ldm = DiffTalkLDM(DiffTalkLDMConfig(unet=unet_preset("tiny"), conditions=cond))
    save_component(directory / "autoencoder.pt", "autoencoder", ae, ae.config.to_dict())
    save_component(directory / "ldm.pt", "ldm", ldm, ldm.config.to_dict())
    data = {"crop": {"scale": 1.8, "vy": -0.1, "smoothing": 5}, "audio": {"encoder": str(w2v)}}
    write_manifest(directory, ae.config.resolution, data)


@pytest.mark.parametrize("resolution", [256, 512])
def test_256_and_512_px_from_a_video(resolution, media, videos, w2v):
    from talkinghead.media.source import load_source

    parent = media[0] / "both"
    for res, preset in ((256, "tiny-f4"), (512, "tiny-f8")):
        if not (parent / f"difftalk_{res}" / "difftalk.json").is_file():
            _random_checkpoint(parent / f"difftalk_{res}", preset, w2v)
    assert load_difftalk(parent, resolution).resolution == resolution
    out = media[0] / f"out_{resolution}.mp4"
    wav = media[0] / "two.wav"
    if not wav.is_file():
        import soundfile

        soundfile.write(wav, media[3][:1280], 16000)  # two frames
    # As `talkinghead generate --method difftalk` calls it.
    path = generate_video(
        videos[0] / "clip.mp4",
        wav,
        str(out),
        checkpoints=parent,
        seed=0,
        steps=1,
        device="cpu",
        resolution=resolution,
        fps=25,
    )
    assert path == out
    result = load_source(out)
    assert len(result.frames) == 2 and result.size == (256, 256)


def test_video_sources_keep_their_speed():
    frames = [np.zeros((4, 4, 3), np.uint8)] * 4
    arrays = (np.zeros((4, 2, 2, 3), np.uint8), np.zeros((4, 478, 2)), np.zeros((4, 3, 3)))
    same = SourceFaces(frames, *arrays, fps=25.0, is_image=False, source_fps=25.0)
    assert [same.index(i) for i in range(9)] == [0, 1, 2, 3, 3, 2, 1, 0, 0]
    fast = SourceFaces(frames, *arrays, fps=25.0, is_image=False, source_fps=50.0)
    assert [fast.index(i) for i in range(4)] == [0, 2, 3, 1]
    image = SourceFaces(frames[:1], *(a[:1] for a in arrays), fps=25.0, is_image=True)
    assert {image.index(i) for i in range(5)} == {0}


def test_unsupported_resolution_and_options(trained, media, videos):
    with pytest.raises(TalkingHeadError, match="256, 512"):
        generate_video(
            media[1], videos[1], media[0] / "x.mp4", checkpoints=trained[0], resolution=384
        )
    with pytest.raises(TalkingHeadError, match="unknown DiffTalk option"):
        generate_video(media[1], videos[1], media[0] / "x.mp4", checkpoints=trained[0], colour=1)
    with pytest.raises(TalkingHeadError, match="no DiffTalk checkpoint for 512"):
        load_difftalk(trained[0], 512)


def test_pipeline_loads_once_and_gives_generate_videos_frames(trained, media, videos, monkeypatch):
    from PIL import Image

    from talkinghead.media.clip import VideoClip
    from talkinghead.methods.difftalk import pipeline as module

    pipe = module.DiffTalkPipeline.from_pretrained(trained[0])
    assert pipe.to("cpu") is pipe and f"resolution={RES}" in repr(pipe)
    loads = []
    real = module.load_difftalk
    monkeypatch.setattr(module, "load_difftalk", lambda *a: loads.append(a) or real(*a))
    clip = pipe.generate(media[1], videos[1], seed=5, steps=2)
    assert isinstance(clip, VideoClip)
    assert (clip.num_frames, clip.fps, clip.size) == (5, 25, (256, 256))
    import talkinghead.face as face

    made, real_create = [], face.create_face_analyzer
    monkeypatch.setattr(
        face, "create_face_analyzer", lambda *a, **k: made.append(a) or real_create(*a, **k)
    )
    again = pipe.generate(media[1], videos[1], generator=torch.Generator().manual_seed(5), steps=2)
    np.testing.assert_array_equal(clip.frames, again.frames)
    # the audio model is the pipeline's, the face analyser this thread's: neither made again
    assert len(pipe._encoders) == 1 and not made and not loads
    out = media[0] / "pipe_frames"
    generate_video(media[1], videos[1], f"{out}/", checkpoints=trained[0], seed=5, steps=2)
    png = np.stack([np.asarray(Image.open(p)) for p in sorted(out.glob("*.png"))])
    np.testing.assert_array_equal(png, clip.frames)
    assert len(loads) == 1
    with pytest.raises(TalkingHeadError, match=f"holds the {RES} px DiffTalk checkpoint"):
        pipe.generate(media[1], videos[1], resolution=512)
    with pytest.raises(TalkingHeadError, match="seed or generator, not both"):
        pipe.generate(media[1], videos[1], seed=1, generator=torch.Generator())
