"""DiT-Head end to end on CPU: prepare a tiny clip, overfit both stages, generate."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from _dithead_helpers import make_clip, require_media, speech, tiny_wav2vec2
from talkinghead.errors import CheckpointError, TalkingHeadError
from talkinghead.methods.dithead.checkpoint import load_checkpoint
from talkinghead.methods.dithead.data import load_prepared, prepare_dataset
from talkinghead.methods.dithead.train import DiTTrainConfig, VQTrainConfig, train_dit, train_vq
from talkinghead.models.dithead_losses import VQGANLossConfig

SIZE = 32  # crop side: 8x8 latents with the tiny VQGAN (f = 4)
VQ_CONFIG = VQTrainConfig(
    preset="tiny",
    steps=60,
    batch_size=4,
    lr=3e-3,
    betas=(0.9, 0.99),  # faster than the GAN-friendly (0.5, 0.9) for pure reconstruction
    device="cpu",
    loss=VQGANLossConfig(disc_start=10**9),  # the GAN path has its own test below
    log_every=0,
    save_every=0,
)
DIT_CONFIG = DiTTrainConfig(
    preset="tiny",
    steps=80,
    batch_size=8,
    lr=2e-3,
    ema_decay=0.0,
    device="cpu",
    log_every=0,
    save_every=0,
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(dataset dir, checkpoints dir, {stage: TrainResult}, work dir)."""
    require_media()
    torch.set_num_threads(1)
    work = tmp_path_factory.mktemp("dithead")
    videos = work / "videos"
    videos.mkdir()
    make_clip(videos / "clip.mp4")
    w2v = tiny_wav2vec2(work / "w2v")
    data = work / "data"
    calls = []
    report = prepare_dataset(
        videos,
        data,
        audio_model=str(w2v),
        size=SIZE,
        min_ref_distance=6,
        face_backend="mediapipe",
        progress=lambda *a: calls.append(a),
    )
    assert report.ok == ["clip"] and not report.failed, str(report)
    assert calls[-1] == (1, 1)
    # the prepare-data command, run again: resumable, so the clip is reused, not redone
    from talkinghead.cli import app

    args = ["prepare-data", str(videos), str(data), "--method", "dithead", "--option"]
    args += [f"audio_model={w2v}", "--option", f"size={SIZE}", "--option", "min_ref_distance=6"]
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert "0 prepared, 1 already done, 0 failed; 24 frames" in again.output
    ckpt = work / "ckpt"
    results = {
        "vq-full": train_vq(data, ckpt, VQ_CONFIG, which="full"),
        "vq-masked": train_vq(data, ckpt, VQ_CONFIG, which="masked"),
    }
    results["dit"] = train_dit(data, ckpt, DIT_CONFIG)
    return data, ckpt, results, work


def test_prepared_dataset(trained):
    data_dir, _, _, _ = trained
    data = load_prepared(data_dir)
    (clip,) = data.clips
    assert len(clip) == 24  # 24 video frames, 0.96 s of audio
    assert clip.frames.shape == (24, SIZE, SIZE, 3) and clip.frames.dtype == np.uint8
    assert clip.landmarks.shape == (24, 478, 2)
    assert clip.audio.shape == (24, 33)
    assert clip.valid.all()
    assert data.settings.audio.dim == 363  # 11 frames x 33 CTC logits, the paper's size
    assert data.settings.min_ref_distance == 6
    # the crop is centred on the face: the landmarks fill most of it
    span = clip.landmarks[0].max(0) - clip.landmarks[0].min(0)
    assert (span > 0.5 * SIZE).all() and (span < SIZE).all()


@pytest.mark.parametrize("stage", ["vq-full", "vq-masked", "dit"])
def test_overfit_loss_falls_5x(trained, stage):
    result = trained[2][stage]
    assert result.final_loss * 5 <= result.initial_loss, (result.initial_loss, result.final_loss)
    assert len(result.history) == (DIT_CONFIG if stage == "dit" else VQ_CONFIG).steps


def test_checkpoints_round_trip(trained):
    _, ckpt, _, _ = trained
    _vq, meta = load_checkpoint(ckpt / "vq_masked.pt", "vq")
    assert meta["which"] == "masked" and meta["step"] == VQ_CONFIG.steps
    assert meta["data"].crop.size == SIZE
    dit, meta = load_checkpoint(ckpt / "dit.pt", "dit")
    assert meta["latent_scale"] > 0 and dit.config.input_size == SIZE // 4
    assert dit.config.audio_dim == 363
    with pytest.raises(CheckpointError, match="not 'vq'"):
        load_checkpoint(ckpt / "dit.pt", "vq")
    # resuming continues from the stored step and optimiser state
    more = train_dit(trained[0], ckpt, replace(DIT_CONFIG, steps=DIT_CONFIG.steps + 2, resume=True))
    assert len(more.history) == 2
    _, meta = load_checkpoint(ckpt / "dit.pt", "dit")
    assert meta["step"] == DIT_CONFIG.steps + 2


def test_dit_ema_is_exported_and_resumed_from_the_saved_average(trained, tmp_path):
    from talkinghead.methods.dithead.checkpoint import read_checkpoint

    data, ckpt, _, _ = trained
    config = replace(DIT_CONFIG, steps=2, ema_decay=0.5)
    train_dit(data, tmp_path, config, vq_dir=ckpt)
    first = read_checkpoint(tmp_path / "dit.pt", "dit")
    raw = first["train_state"]["model"]
    assert any(not torch.equal(v, raw[k]) for k, v in first["state_dict"].items())
    train_dit(data, tmp_path, replace(config, steps=3, resume=True), vq_dir=ckpt)
    second = read_checkpoint(tmp_path / "dit.pt", "dit")
    assert second["step"] == 3 and second["train_state"]["ema"]["num_updates"] == 3
    # One more update from the saved average, with the warmed-up decay min(0.5, 4 / 13).
    for k, v in second["state_dict"].items():
        expected = torch.lerp(first["state_dict"][k], second["train_state"]["model"][k], 1 - 4 / 13)
        assert torch.allclose(v, expected, atol=1e-6), k


def test_dit_ema_warm_up_moves_a_short_run_and_the_loss_is_logged(trained, tmp_path):
    """The paper's decay 0.9999 without warm-up leaves a 10-step run's average at the random
    initialisation; with it the exported weights are those of training."""
    import json

    data, ckpt, _, _ = trained
    config = replace(DIT_CONFIG, steps=10, ema_decay=0.9999, log_every=5)
    warm = train_dit(data, tmp_path / "warm", config, vq_dir=ckpt)
    cold = train_dit(data, tmp_path / "cold", replace(config, ema_warmup=False), vq_dir=ckpt)
    assert warm.final_loss < cold.final_loss
    assert abs(cold.final_loss - cold.initial_loss) < abs(warm.final_loss - warm.initial_loss)
    lines = (tmp_path / "warm" / "log_dit" / "train_log.jsonl").read_text().splitlines()
    logged = [json.loads(x) for x in lines]
    assert [r["step"] for r in logged] == [5, 10]
    mean = sum(h["loss"] for h in warm.history[5:]) / 5  # each line: the mean since the last
    assert logged[1]["loss"] == pytest.approx(mean, rel=1e-5)
    assert logged[1]["samples_per_s"] > 0
    assert any((tmp_path / "warm" / "log_dit" / "logs").iterdir())  # TensorBoard events


def test_dit_resume_is_exact(trained, tmp_path):
    """2 steps + resume to 4 == 4 uninterrupted: the batches, noise and EMA continue."""
    data, ckpt, _, _ = trained
    config = replace(DIT_CONFIG, steps=4, batch_size=2, ema_decay=0.9, save_every=2)
    whole = train_dit(data, tmp_path / "whole", config, vq_dir=ckpt)
    train_dit(data, tmp_path / "part", replace(config, steps=2), vq_dir=ckpt)
    rest = train_dit(data, tmp_path / "part", replace(config, resume=True), vq_dir=ckpt)
    assert rest.history == whole.history[2:]
    a = torch.load(tmp_path / "whole" / "dit.pt", weights_only=True)
    b = torch.load(tmp_path / "part" / "dit.pt", weights_only=True)
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    assert (tmp_path / "part" / "state_dit" / "rank_state_0.pt").is_file()


def test_two_process_accelerate_launch_resume_is_exact(trained, tmp_path):
    """`accelerate launch` with 2 CPU processes (gloo): 2 steps + resume to 4 == 4 straight,
    for the DiT (EMA included) and a VQGAN (its GAN on from step 1)."""
    from _accelerate_launch import launch_commands

    data, ckpt, _, _ = trained
    opts = ["--preset", "tiny", "--batch-size", "2", "--lr", "1e-3", "--save-every", "2",
            "--log-every", "1"]  # fmt: skip
    stages = (("dit", ["--stage", "dit", "--vq-dir", str(ckpt), "--ema-decay", "0.9"]),
              ("vq_full", ["--stage", "vq", "--which", "full", "--disc-start", "1"]))  # fmt: skip
    # One launch; the straight runs come between each split and its resume.
    order = (("split", 2, []), ("straight", 4, []), ("split", 4, ["--resume"]))
    runs = [["train-dithead", str(data), str(tmp_path / out), *stage, *opts,
             "--steps", str(steps), *extra]
            for out, steps, extra in order for _, stage in stages]  # fmt: skip
    run = launch_commands(runs, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    for name, _ in stages:
        a = torch.load(tmp_path / "straight" / f"{name}.pt", weights_only=True)
        b = torch.load(tmp_path / "split" / f"{name}.pt", weights_only=True)
        assert a["step"] == b["step"] == 4
        for k in a["state_dict"]:
            assert torch.equal(a["state_dict"][k], b["state_dict"][k]), (name, k)
    assert (tmp_path / "split" / "state_dit" / "rank_state_1.pt").is_file()
    log = (tmp_path / "split" / "log_dit" / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in log] == [1, 2, 3, 4]


def test_vq_gan_path_and_cli(trained, tmp_path):
    from talkinghead.cli import app

    data, _, _, _ = trained
    result = CliRunner().invoke(
        app,
        [
            "train-dithead", str(data), str(tmp_path), "--stage", "vq", "--preset", "tiny",
            "--which", "full", "--steps", "3", "--batch-size", "2", "--device", "cpu",
            "--disc-start", "1",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "vq-full: eval loss" in result.output
    payload = torch.load(tmp_path / "vq_full.pt", weights_only=True)
    assert payload["train_state"]["discriminator"]  # the GAN ran from step 1
    bad = CliRunner().invoke(app, ["train-dithead", str(data), str(tmp_path), "--stage", "x"])
    assert bad.exit_code != 0 and isinstance(bad.exception, TalkingHeadError)


def _video_info(path: Path) -> tuple[int, float, int, int]:
    with av.open(str(path)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        stream = c.streams.video[0]
        return len(frames), float(stream.average_rate), stream.width, stream.height


def _audio(work: Path, frames: int) -> Path:
    import soundfile

    path = work / f"speech_{frames}.wav"
    soundfile.write(path, speech(frames * 640 - 100), 16000)  # just under `frames` at 25 fps
    return path


def test_generate_video_50fps(trained):
    from talkinghead.methods.dithead.pipeline import generate_video

    _, ckpt, _, work = trained
    stages = set()
    out = generate_video(
        work / "videos" / "clip.mp4",
        _audio(work, 8),
        work / "out_50.mp4",
        checkpoints=ckpt,
        seed=0,
        steps=3,
        fps=50,
        face_backend="mediapipe",
        progress=lambda stage, done, total: stages.add(stage),
    )
    assert _video_info(out) == (16, 50, 160, 160)  # 2 x 8 frames, 2x interpolated
    assert {"audio", "faces", "denoise"} <= stages


def test_generate_command_25fps(trained):
    from talkinghead.cli import app

    _, ckpt, _, work = trained
    out = work / "out_25.mp4"
    args = [
        "generate", "--method", "dithead", "--checkpoints", str(ckpt), "--source",
        str(work / "videos" / "clip.mp4"), "--audio", str(_audio(work, 30)), "-o", str(out),
        "--steps", "2", "--seed", "1", "--fps", "25", "--device", "cpu",
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    # 30 frames from a 24-frame source: the source plays forwards then backwards
    assert _video_info(out) == (30, 25, 160, 160)


def test_generate_command_defaults_to_the_papers_50fps(trained):
    from talkinghead.cli import app

    _, ckpt, _, work = trained
    out = work / "out_default.mp4"
    args = [
        "generate", "--method", "dithead", "--checkpoints", str(ckpt), "--source",
        str(work / "videos" / "clip.mp4"), "--audio", str(_audio(work, 4)), "-o", str(out),
        "--steps", "1", "--seed", "1", "--device", "cpu",
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert _video_info(out)[:2] == (8, 50)  # 4 frames, 2x interpolated


def test_sampling_deterministic_and_evolving(trained):
    from talkinghead.face import create_face_analyzer
    from talkinghead.methods.dithead.pipeline import (
        DiTHeadGenerator,
        DiTHeadModels,
        _source_frames,
        analyze_source,
    )

    _, ckpt, _, work = trained
    models = DiTHeadModels.load(ckpt)
    frames = _source_frames(work / "videos" / "clip.mp4", None)[:3]
    faces = analyze_source(frames, models.settings, create_face_analyzer("mediapipe"))
    audio = np.random.default_rng(0).normal(size=(3, 363)).astype(np.float32)
    gen = DiTHeadGenerator(models, steps=2)

    def run(seed: int, evolve: bool = True) -> list[np.ndarray]:
        g = torch.Generator().manual_seed(seed)
        return list(gen.frames(faces, audio, generator=g, reference=2, evolve=evolve))

    a, b, c = run(0), run(0), run(1)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert any(not np.array_equal(x, y) for x, y in zip(a, c, strict=True))
    # only the masked lower face changes: the top rows of the frame are the source's
    assert np.array_equal(a[0][:20], frames[0][:20])
    # the first frame does not depend on evolving; later ones do
    d = run(0, evolve=False)
    assert np.array_equal(a[0], d[0])


def test_generate_errors(trained):
    from talkinghead.methods.dithead.pipeline import generate_video

    _, ckpt, _, work = trained
    with pytest.raises(TalkingHeadError, match="25 or 50"):
        generate_video(
            work / "videos" / "clip.mp4", work / "x.wav", "o.mp4", checkpoints=ckpt, fps=30
        )
    with pytest.raises(TalkingHeadError, match="unknown dithead option"):
        generate_video(
            work / "videos" / "clip.mp4", work / "x.wav", "o.mp4", checkpoints=ckpt, foo=1
        )
    with pytest.raises(CheckpointError, match="not found"):
        generate_video(work / "videos" / "clip.mp4", work / "x.wav", "o.mp4", checkpoints=work)


def _png_frames(folder: Path) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))])


def _count_face_analyzers(monkeypatch) -> list:
    """The analysers `talkinghead.face` builds from now on (the thread's cache reuses them)."""
    import talkinghead.face as face

    made, real = [], face.create_face_analyzer
    monkeypatch.setattr(
        face, "create_face_analyzer", lambda *a, **k: made.append(a) or real(*a, **k)
    )
    return made


def test_pipeline_loads_once_and_gives_generate_videos_frames(trained, monkeypatch):
    from talkinghead.media.clip import VideoClip
    from talkinghead.methods.dithead.pipeline import (
        DiTHeadModels,
        DiTHeadPipeline,
        generate_video,
    )

    _, ckpt, _, work = trained
    source, audio = work / "videos" / "clip.mp4", _audio(work, 4)
    opts = {"steps": 2, "fps": 25, "face_backend": "mediapipe"}
    pipe = DiTHeadPipeline.from_pretrained(ckpt)
    assert pipe.to("cpu") is pipe and pipe.device == torch.device("cpu")
    assert "DiTHeadPipeline(" in repr(pipe) and "32px" in repr(pipe)
    loads = []
    real_load = DiTHeadModels.load.__func__
    monkeypatch.setattr(
        DiTHeadModels, "load", classmethod(lambda cls, *a: loads.append(a) or real_load(cls, *a))
    )
    clip = pipe.generate(source, audio, seed=3, **opts)
    assert isinstance(clip, VideoClip)
    assert (clip.num_frames, clip.fps, clip.size, clip.sample_rate) == (4, 25, (160, 160), 16000)
    # seed=s is generator=manual_seed(s); the audio model and face analyser are made once
    made = _count_face_analyzers(monkeypatch)
    again = pipe.generate(source, audio, generator=torch.Generator().manual_seed(3), **opts)
    np.testing.assert_array_equal(clip.frames, again.frames)
    assert len(pipe._encoders) == 1 and not made and not loads
    other = pipe.generate(source, audio, seed=4, **opts)
    assert not np.array_equal(clip.frames, other.frames)
    # the one-video entry point makes the same frames (PNG frames: lossless)
    generate_video(source, audio, f"{work}/pipe_frames/", checkpoints=ckpt, seed=3, **opts)
    np.testing.assert_array_equal(_png_frames(work / "pipe_frames"), clip.frames)
    assert len(loads) == 1
    assert _video_info(clip.save(work / "clip_saved.mp4")) == (4, 25, 160, 160)
    with pytest.raises(TalkingHeadError, match="seed or generator, not both"):
        pipe.generate(source, audio, seed=1, generator=torch.Generator(), **opts)
    with pytest.raises(TalkingHeadError, match="the output is the source input"):
        pipe.generate(source, audio, source, **opts)


def test_batch_worker_loads_a_dithead_checkpoint_once(trained, monkeypatch):
    from talkinghead.batch.jobs import BatchJob
    from talkinghead.batch.worker import JobWorker, WorkerSettings
    from talkinghead.methods.dithead.pipeline import DiTHeadModels

    _, ckpt, _, work = trained
    loads = []
    real_load = DiTHeadModels.load.__func__
    monkeypatch.setattr(
        DiTHeadModels, "load", classmethod(lambda cls, *a: loads.append(a) or real_load(cls, *a))
    )
    worker = JobWorker(WorkerSettings(), "cpu")
    outcomes = [
        worker.run(
            BatchJob(
                f"job{i}",
                work / "videos" / "clip.mp4",
                _audio(work, 3),
                str(work / f"batch_{i}.mp4"),
                method="dithead",
                settings={"seed": i, "steps": 1},
                checkpoints=ckpt,
                options={"fps": 25, "face_backend": "mediapipe"},
            )
        )
        for i in range(2)
    ]
    assert [(o.ok, o.frames) for o in outcomes] == [(True, 3), (True, 3)], outcomes
    assert len(loads) == 1
    # The report's phases: the load on the first job only, then DiT-Head's own stages.
    stages = ["prepare", "audio", "faces", "denoise", "total"]
    assert [list(o.timings) for o in outcomes] == [["load", *stages], stages]
