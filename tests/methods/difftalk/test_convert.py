"""`convert-difftalk`: CompVis-layout checkpoints (sstzal/DiffTalk's latent diffusion, a VQ
first stage) made from tiny networks by the inverse mapping (`_difftalk_compvis`) convert
back to the same networks: the same weights, bit for bit, and the same frames."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from _conformance import MEDIA_DIR, skip_missing
from _difftalk_compvis import (
    first_stage_state_dict,
    ldm_state_dict,
    save_lightning_checkpoint,
)
from _dithead_helpers import save_tiny_wav2vec2
from _extras import needs_packages_of
from talkinghead.errors import CheckpointError, SettingsError, TalkingHeadError
from talkinghead.methods.difftalk.checkpoint import (
    DiffTalkModels,
    load_autoencoder,
    load_difftalk,
    read_component,
    save_component,
    write_manifest,
)
from talkinghead.methods.difftalk.convert import convert_compvis_checkpoint, read_compvis_state_dict
from talkinghead.methods.difftalk.features import LANDMARK_POINTS, MESH_POINTS
from talkinghead.methods.difftalk.pipeline import DiffTalkConfig, DiffTalkGenerator, generate_video
from talkinghead.models.difftalk_autoencoder import (
    DiffTalkAutoencoder,
    DiffTalkAutoencoderConfig,
    autoencoder_preset,
)
from talkinghead.models.difftalk_conditions import DiffTalkConditionConfig
from talkinghead.models.difftalk_unet import (
    DiffTalkLDM,
    DiffTalkLDMConfig,
    DiffTalkUNetConfig,
    unet_preset,
)

pytestmark = needs_packages_of("difftalk")

RES = 64  # tiny-f4 at 64 px: a 16 x 16 latent


def _randomise(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    # Every tensor distinct (norm weights are not all ones), so a swapped key shows.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return module.eval()


def _tiny(conditions: DiffTalkConditionConfig | None = None):
    ae_config = autoencoder_preset("tiny-f4", resolution=RES)
    cond = conditions or DiffTalkConditionConfig(num_landmarks=len(LANDMARK_POINTS))
    ldm_config = DiffTalkLDMConfig(unet=unet_preset("tiny", sample_size=16), conditions=cond)
    ae = _randomise(DiffTalkAutoencoder(ae_config), 1)
    ldm = _randomise(DiffTalkLDM(ldm_config), 2)
    ema = _randomise(DiffTalkLDM(ldm_config), 3)
    return ae, ldm, ema


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(original autoencoder, raw LDM, EMA LDM, the CompVis .ckpt holding all three)."""
    ae, ldm, ema = _tiny()
    path = tmp_path_factory.mktemp("compvis") / "difftalk.ckpt"
    save_lightning_checkpoint(ldm_state_dict(ae, ldm, ema), path)
    return ae, ldm, ema, path


def _convert(ckpt: Path, out: Path, **kwargs):
    kwargs.setdefault("autoencoder", autoencoder_preset("tiny-f4", resolution=RES))
    kwargs.setdefault("unet", unet_preset("tiny"))
    return convert_compvis_checkpoint(ckpt, out, **kwargs)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def _what_compvis_samples(ldm: DiffTalkLDM, ema: DiffTalkLDM) -> DiffTalkLDM:
    """The EMA's UNet with the trained condition encoders (LitEma covers the UNet only)."""
    model = DiffTalkLDM(ldm.config).eval()
    model.unet.load_state_dict(ema.unet.state_dict())
    model.conditioner.load_state_dict(ldm.conditioner.state_dict())
    return model


def _frame_inputs(seed: int = 0):
    rng = np.random.default_rng(seed)
    crop = rng.integers(0, 256, (RES, RES, 3), dtype=np.uint8)
    reference = rng.integers(0, 256, (RES, RES, 3), dtype=np.uint8)
    landmarks = rng.uniform(0.2 * RES, 0.8 * RES, (MESH_POINTS, 2)).astype(np.float32)
    return crop, landmarks, reference


def _render(models: DiffTalkModels, seed: int = 0) -> np.ndarray:
    crop, landmarks, reference = _frame_inputs()
    c = models.ldm.config.conditions
    audio = np.random.default_rng(1).random((c.smooth_frames, c.audio_window, c.audio_feature_dim))
    gen = DiffTalkGenerator(models, DiffTalkConfig(steps=3))
    out, _ = gen.render_frame(
        crop, landmarks, reference, audio.astype(np.float32), torch.Generator().manual_seed(seed)
    )
    return out


def test_an_ldm_checkpoint_converts_to_the_same_networks(tiny, tmp_path):
    ae, ldm, ema, ckpt = tiny
    report = _convert(ckpt, tmp_path / "out")
    assert report.kind == "ldm" and report.ema
    assert report.initialised == [] and report.notes == [] and report.ignored == {}
    assert [p.name for p in report.files] == ["autoencoder.pt", "ldm.pt", "difftalk.json"]
    models = load_difftalk(tmp_path / "out")
    assert models.resolution == RES and models.latent_size == 16
    _same_weights(models.autoencoder, ae)
    _same_weights(models.ldm.unet, ema.unet)  # the EMA's UNet, as CompVis samples
    _same_weights(models.ldm.conditioner, ldm.conditioner)  # LitEma covers the UNet only
    # The same outputs, bit for bit: each network, then a whole generated crop.
    x = torch.rand(2, 3, RES, RES) * 2 - 1
    with torch.no_grad():
        assert torch.equal(
            models.autoencoder.decode(models.autoencoder.encode(x)), ae.decode(ae.encode(x))
        )
    original = DiffTalkModels(ae, _what_compvis_samples(ldm, ema), RES, {}, tmp_path)
    np.testing.assert_array_equal(_render(models), _render(original))
    manifest = json.loads((tmp_path / "out" / "difftalk.json").read_text())
    assert manifest["data"]["audio"]["feature_dim"] == 32 and manifest["data"]["smooth_radius"] == 8
    payload = read_component(tmp_path / "out" / "ldm.pt", "ldm")
    assert payload["converted_from"] == str(ckpt) and payload["ema"] is True
    assert "train_state" not in payload  # not a training run to --resume


def test_generate_uses_a_converted_checkpoint(tiny, tmp_path):
    """`generate --method difftalk --checkpoints OUT_DIR` on the converted directory makes
    the video the original networks make (the same frames, the same seed)."""
    import soundfile

    from talkinghead.audio.io import load_audio
    from talkinghead.media.source import load_source

    face, speech = MEDIA_DIR / "ditto_example_face.jpg", MEDIA_DIR / "ditto_example_speech.wav"
    if not face.is_file() or not speech.is_file():
        skip_missing(f"{MEDIA_DIR}")
    wav = tmp_path / "speech.wav"  # 0.12 s: three frames
    soundfile.write(wav, load_audio(speech, 16000)[32000:33920], 16000)
    w2v = save_tiny_wav2vec2(tmp_path / "wav2vec2")
    ae, ldm, ema, ckpt = tiny
    _convert(ckpt, tmp_path / "converted", audio_model=str(w2v))
    original = tmp_path / "original"
    expected = _what_compvis_samples(ldm, ema)
    save_component(original / "autoencoder.pt", "autoencoder", ae, ae.config.to_dict())
    save_component(original / "ldm.pt", "ldm", expected, expected.config.to_dict())
    write_manifest(original, RES, {"audio": {"encoder": str(w2v)}})
    videos = []
    for d in (original, tmp_path / "converted"):
        out = generate_video(face, wav, tmp_path / f"{d.name}.mp4", checkpoints=d, seed=0, steps=2)
        videos.append(load_source(out).frames)
    assert len(videos[0]) == len(videos[1]) == 3
    for a, b in zip(*videos, strict=True):
        np.testing.assert_array_equal(a, b)


def test_no_ema_takes_the_raw_unet(tiny, tmp_path):
    _, ldm, _, ckpt = tiny
    report = _convert(ckpt, tmp_path, ema=False)
    assert not report.ema
    _same_weights(load_difftalk(tmp_path).ldm, ldm)


def test_a_vq_first_stage_converts_alone(tmp_path):
    ae = _randomise(DiffTalkAutoencoder(autoencoder_preset("tiny-f8", resolution=RES)), 4)
    ckpt = save_lightning_checkpoint(first_stage_state_dict(ae), tmp_path / "vq.ckpt")
    report = convert_compvis_checkpoint(ckpt, tmp_path / "out", autoencoder=ae.config)
    assert report.kind == "first_stage"
    assert [p.name for p in report.files] == ["autoencoder.pt"]
    assert report.ignored == {"loss.*": 2}  # the training loss's discriminator and logvar
    converted = load_autoencoder(tmp_path / "out" / "autoencoder.pt")
    _same_weights(converted, ae)
    x = torch.rand(1, 3, RES, RES) * 2 - 1
    with torch.no_grad():
        assert torch.equal(converted.decode(converted.encode(x)), ae.decode(ae.encode(x)))
    # A bare state dict in torch's legacy (pre-zip) format reads too.
    legacy = tmp_path / "legacy.ckpt"
    torch.save(first_stage_state_dict(ae), legacy, _use_new_zipfile_serialization=False)
    convert_compvis_checkpoint(legacy, tmp_path / "legacy", autoencoder=ae.config)
    _same_weights(load_autoencoder(tmp_path / "legacy" / "autoencoder.pt"), ae)


def test_sizes_are_read_from_the_checkpoint(tmp_path):
    """Without an expected configuration: CompVis' 32 normalisation groups and the release's
    32-channel heads (what the weights cannot say), the rest from the shapes."""
    ae_config = DiffTalkAutoencoderConfig(256, (32, 64), 1, 3, 16, 32, True)
    unet = DiffTalkUNetConfig(
        sample_size=128, base_channels=32, channel_mult=(1, 2), num_res_blocks=1,
        attention_resolutions=(2,), head_channels=32, norm_num_groups=32,
    )  # fmt: skip
    cond = DiffTalkConditionConfig(smooth_radius=2, num_landmarks=len(LANDMARK_POINTS))
    ae = _randomise(DiffTalkAutoencoder(ae_config), 5)
    ldm = _randomise(DiffTalkLDM(DiffTalkLDMConfig(unet=unet, conditions=cond)), 6)
    ckpt = save_lightning_checkpoint(ldm_state_dict(ae, ldm), tmp_path / "model.ckpt")
    report = convert_compvis_checkpoint(ckpt, tmp_path / "out", resolution=256)
    assert not report.ema  # no model_ema.* in the file
    models = load_difftalk(tmp_path / "out")
    assert models.autoencoder.config == ae_config
    assert models.ldm.config == DiffTalkLDMConfig(
        unet=replace(unet, sample_size=128), conditions=cond
    )
    _same_weights(models.ldm, ldm)
    _same_weights(models.autoencoder, ae)


def test_the_release_condition_encoders_map_where_they_fit(tmp_path):
    """The release's sizes (29 DeepSpeech characters, an 8-frame filter, 39 dlib landmarks):
    every tensor that fits ours is taken, the two that cannot be are initialised and said."""
    release = DiffTalkConditionConfig(audio_feature_dim=29, num_landmarks=39)
    ae, ldm, _ = _tiny(release)
    state = ldm_state_dict(ae, ldm)
    # An 8-frame filter: only its frame-mixing layer depends on the number of frames.
    g = torch.Generator().manual_seed(7)
    state["cond_stage_model_for_audio_smooth.attentionNet.0.weight"] = torch.randn(
        8, 8, generator=g
    )
    state["cond_stage_model_for_audio_smooth.attentionNet.0.bias"] = torch.randn(8, generator=g)
    ckpt = save_lightning_checkpoint(state, tmp_path / "release.ckpt")
    report = _convert(ckpt, tmp_path / "out")
    assert report.initialised == [
        "conditioner.audio.filter.mix.bias",
        "conditioner.audio.filter.mix.weight",
        "conditioner.landmarks.mlp.0.bias",
        "conditioner.landmarks.mlp.0.weight",
    ]
    assert len(report.notes) == 3
    assert "8 frames" in report.notes[0] and "39 landmarks" in report.notes[1]
    assert "29 audio features" in report.notes[2]
    models = load_difftalk(tmp_path / "out")
    c = models.ldm.config.conditions
    assert (c.audio_feature_dim, c.smooth_frames, c.num_landmarks) == (29, 17, len(LANDMARK_POINTS))
    ours, theirs = models.ldm.conditioner.state_dict(), ldm.conditioner.state_dict()
    for k in ours:
        if f"conditioner.{k}" not in report.initialised:
            assert torch.equal(ours[k], theirs[k]), k
    _same_weights(models.ldm.unet, ldm.unet)
    manifest = json.loads((tmp_path / "out" / "difftalk.json").read_text())
    assert "encoder" not in manifest["data"]["audio"]  # no 29-feature model to name


def test_a_wrong_shape_names_the_key_and_what_was_expected(tiny, tmp_path):
    _, _, _, ckpt = tiny
    state = read_compvis_state_dict(ckpt)
    state["first_stage_model.quantize.embedding.weight"] = torch.zeros(32, 3)
    bad = save_lightning_checkpoint(state, tmp_path / "bad.ckpt")
    with pytest.raises(CheckpointError) as info:
        _convert(bad, tmp_path / "out")
    message = str(info.value)
    assert "\n" not in message
    assert "first_stage_model.quantize.embedding.weight has shape (32, 3)" in message
    assert "expects (64, 3)" in message
    assert not (tmp_path / "out").exists()  # nothing written
    # Another expected UNet: the first differing key, with both shapes and the expectation.
    with pytest.raises(CheckpointError, match=r"model\.diffusion_model\.time_embed\.0\.weight "
                       r"has shape \(64, 16\); the release UNet \(channels 256 x 1-2-3-4.*\) "
                       r"expects \(1024, 256\)"):  # fmt: skip
        convert_compvis_checkpoint(ckpt, tmp_path / "out", unet="release",
                                   autoencoder=autoencoder_preset("tiny-f4", resolution=RES))  # fmt: skip
    # Self-attention inside a level of the first stage (taming's attn_resolutions): refused.
    attn = dict(state)
    attn["first_stage_model.quantize.embedding.weight"] = torch.zeros(64, 3)
    attn["first_stage_model.encoder.down.2.attn.0.q.weight"] = torch.zeros(16, 16, 1, 1)
    with pytest.raises(CheckpointError, match=r"encoder\.down\.2\.attn\.0\.q\.weight has no "
                       r"counterpart .*self-attention inside a level"):  # fmt: skip
        _convert(save_lightning_checkpoint(attn, tmp_path / "attn.ckpt"), tmp_path / "out")
    # A conditioning width the UNet does not attend to.
    wide = dict(state)
    wide["first_stage_model.quantize.embedding.weight"] = torch.zeros(64, 3)
    wide["cond_stage_model_for_ldm.encoder_fc1.4.weight"] = torch.zeros(96, 64)
    wide["cond_stage_model_for_ldm.encoder_fc1.4.bias"] = torch.zeros(96)
    wide_ckpt = save_lightning_checkpoint(wide, tmp_path / "wide.ckpt")
    with pytest.raises(CheckpointError, match=r"attn2\.to_k\.weight attends to a 128-wide context; "
                       r"the condition encoders give 64 \+ 96 = 160"):  # fmt: skip
        _convert(wide_ckpt, tmp_path / "out")


def test_another_noise_schedule_is_refused(tiny, tmp_path):
    state = read_compvis_state_dict(tiny[3])
    state["betas"] = torch.linspace(1e-4, 0.02, 1000)
    ckpt = save_lightning_checkpoint(state, tmp_path / "sched.ckpt")
    with pytest.raises(CheckpointError, match=r"betas: .* not DiffTalk's"):
        _convert(ckpt, tmp_path / "out")


def test_files_that_are_not_compvis_checkpoints_are_refused(tmp_path):
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match=r"junk\.ckpt: not a readable PyTorch checkpoint"):
        convert_compvis_checkpoint(junk, tmp_path / "out")
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"fc.weight": torch.zeros(2, 2)}}, other)
    with pytest.raises(CheckpointError, match="not a CompVis latent-diffusion or VQ checkpoint"):
        convert_compvis_checkpoint(other, tmp_path / "out")
    ae = DiffTalkAutoencoder(autoencoder_preset("tiny-f4"))
    ours = save_component(tmp_path / "autoencoder.pt", "autoencoder", ae, ae.config.to_dict())
    with pytest.raises(CheckpointError, match="already a talkinghead DiffTalk checkpoint"):
        convert_compvis_checkpoint(ours, tmp_path / "out")
    with pytest.raises(CheckpointError, match=r"missing\.ckpt: checkpoint not found"):
        convert_compvis_checkpoint(tmp_path / "missing.ckpt", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_existing_files_and_the_input_are_not_replaced(tiny, tmp_path):
    ckpt = tiny[3]
    _convert(ckpt, tmp_path)
    before = (tmp_path / "ldm.pt").stat().st_mtime_ns
    with pytest.raises(SettingsError, match=r"autoencoder\.pt exists: pass --overwrite"):
        _convert(ckpt, tmp_path)
    assert (tmp_path / "ldm.pt").stat().st_mtime_ns == before
    _convert(ckpt, tmp_path, overwrite=True)
    inside = tmp_path / "in"
    inside.mkdir()
    (inside / "ldm.pt").write_bytes(ckpt.read_bytes())
    with pytest.raises(TalkingHeadError, match="the output is the CHECKPOINT input"):
        _convert(inside / "ldm.pt", inside, overwrite=True)  # would replace its own input
    assert (inside / "ldm.pt").read_bytes() == ckpt.read_bytes()


@pytest.fixture
def cli(monkeypatch, capsys):
    """`talkinghead ...` in this process: (exit code, stdout, stderr)."""
    from talkinghead.cli import main

    def run(*args) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["talkinghead", *map(str, args)])
        with pytest.raises(SystemExit) as exit_info:
            main()
        out, err = capsys.readouterr()
        return exit_info.value.code, out, err

    return run


def test_convert_command(tiny, tmp_path, cli):
    ckpt = tiny[3]
    args = ["convert-difftalk", ckpt, tmp_path / "out", "--autoencoder-preset", "tiny-f4",
            "--unet-preset", "tiny", "--resolution", RES]  # fmt: skip
    code, out, err = cli(*args)
    assert code == 0, err
    assert "ldm.pt" in out and "difftalk.json" in out and "UNet weights: EMA" in out
    assert load_difftalk(tmp_path / "out").resolution == RES
    for bad_args, needle in (
        ([tmp_path / "nothing.ckpt", tmp_path / "x"], "checkpoint not found"),
        ([ckpt, tmp_path / "x", "--unet-preset", "huge"], "unknown UNet preset 'huge'"),
        ([*args[1:]], "exists: pass --overwrite"),
    ):
        code, _, err = cli("convert-difftalk", *bad_args)
        lines = err.strip().splitlines()
        assert code == 1 and len(lines) == 1 and lines[0].startswith("error: "), err
        assert needle in lines[0], err
