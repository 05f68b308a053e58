"""Condition builder: emotion parsing, source attributes and assembly order."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from talkinghead.methods.ditto.motion import (
    EMOTIONS,
    NEUTRAL,
    ConditionBuilder,
    ConditionConfig,
    emotion_index,
    emotion_vector,
    mirror_index,
    parse_emotion,
    shape_code_from_keypoints,
)

E8 = math.exp(8)


def test_emotion_names_and_indices():
    assert EMOTIONS == (
        "Angry",
        "Disgust",
        "Fear",
        "Happy",
        "Neutral",
        "Sad",
        "Surprise",
        "Contempt",
    )
    assert NEUTRAL == 4
    assert emotion_index("happy") == 3 and emotion_index("Contempt") == 7 and emotion_index(5) == 5
    with pytest.raises(ValueError):
        emotion_index("bored")
    with pytest.raises(ValueError):
        emotion_index(8)
    with pytest.raises(TypeError):
        emotion_index(True)


def test_emotion_vector_by_hand():
    one = emotion_vector(4)
    assert one[4].item() == pytest.approx(E8 / (E8 + 7))
    assert one[0].item() == pytest.approx(1 / (E8 + 7))
    two = emotion_vector({"Happy", 4})
    assert two[3].item() == pytest.approx(E8 / (2 * E8 + 6))
    assert two[4].item() == two[3].item()
    assert two.sum().item() == pytest.approx(1.0)
    assert torch.equal(emotion_vector([3, 3, 4]), two)  # a set: duplicates do not count twice


def test_parse_emotion_forms():
    assert torch.equal(parse_emotion(4), emotion_vector(4)[None])
    assert torch.equal(parse_emotion("Neutral"), parse_emotion(4))
    assert torch.equal(parse_emotion([3, 4]), emotion_vector([3, 4])[None])  # list of ints = set
    assert torch.equal(parse_emotion((3, 4)), parse_emotion({3, 4}))
    per_frame = parse_emotion([[4], [3, 4], 3, "Sad"])
    assert per_frame.shape == (4, 8)
    assert torch.equal(per_frame[1], emotion_vector([3, 4]))
    assert torch.equal(per_frame[3], emotion_vector(5))
    labels = parse_emotion(np.array([0, 1, 1]))
    assert labels.shape == (3, 8) and torch.equal(labels[2], emotion_vector(1))
    arr = np.random.default_rng(0).random((5, 8)).astype(np.float32)
    assert torch.equal(parse_emotion(arr), torch.from_numpy(arr))
    assert parse_emotion(torch.ones(8)).shape == (1, 8)
    with pytest.raises(ValueError):
        parse_emotion(np.zeros((5, 7)))
    with pytest.raises(ValueError):
        parse_emotion([])


def test_mirror_index():
    assert mirror_index(torch.arange(10), 3).tolist() == [0, 1, 2, 2, 1, 0, 0, 1, 2, 2]
    assert mirror_index(torch.arange(4), 1).tolist() == [0, 0, 0, 0]


def test_shape_code():
    kp = torch.arange(63.0)
    assert torch.equal(shape_code_from_keypoints(kp.reshape(21, 3)), kp)
    assert torch.equal(shape_code_from_keypoints(kp[None]), kp)
    frames = torch.stack([kp, kp + 1, kp + 2])  # video: the first frame's keypoints
    assert torch.equal(shape_code_from_keypoints(frames.reshape(3, 1, 21, 3)), kp)
    with pytest.raises(ValueError):
        shape_code_from_keypoints(torch.zeros(3, 60))


def _builder(frames=3, **kw):
    eye_open = torch.arange(frames * 2, dtype=torch.float32).reshape(frames, 2)
    eye_ball = 100 + torch.arange(frames * 6, dtype=torch.float32).reshape(frames, 6)
    return ConditionBuilder(
        kw.pop("config", None),
        eye_open=eye_open,
        eye_ball=eye_ball,
        shape_code=-torch.arange(63.0),
        **kw,
    )


def test_assembly_order_and_defaults():
    cfg = ConditionConfig()
    assert cfg.dim == 1103
    assert cfg.blocks == (
        ("audio", 1024),
        ("emotion", 8),
        ("eye_open", 2),
        ("eye_ball", 6),
        ("shape", 63),
    )
    assert cfg.block_slice("eye_ball") == slice(1034, 1040)
    audio = torch.randn(7, 1024)
    cond = _builder(emotion="Happy")(audio)
    assert cond.shape == (7, 1103) and cond.dtype == torch.float32
    assert torch.equal(cond[:, :1024], audio)
    assert torch.equal(cond[:, 1024:1032], emotion_vector(3).expand(7, 8))
    assert cond[:, 1032:1034].tolist()[:4] == [[0, 1], [2, 3], [4, 5], [4, 5]]  # mirror loop
    assert cond[3, 1034:1040].tolist() == [112, 113, 114, 115, 116, 117]
    assert torch.equal(cond[:, 1040:], -torch.arange(63.0).expand(7, 63))
    default = _builder()(audio)
    assert torch.equal(default[0, 1024:1032], emotion_vector(NEUTRAL))


def test_image_source_repeats_first_frame_and_eye_first_frame_mode():
    audio = torch.zeros(5, 1024)
    image = _builder(frames=1)(audio)
    assert image[:, 1032:1034].tolist() == [[0, 1]] * 5
    video = _builder(frames=3, config=ConditionConfig(eye_first_frame=True))(audio)
    assert video[:, 1032:1034].tolist() == [[0, 1]] * 5
    assert video[:, 1034].tolist() == [100] * 5


def test_per_frame_emotion_loops_and_start_offset():
    audio = torch.zeros(5, 1024)
    b = _builder(emotion=[[0], [1], [2]])
    emo = b(audio)[:, 1024:1032].argmax(1).tolist()
    assert emo == [0, 1, 2, 0, 1]  # emotions loop forwards
    # A stream continues from its frame count; prefix rows (negative) take frame 0.
    assert b(audio, start=4)[:, 1024:1032].argmax(1).tolist() == [1, 2, 0, 1, 2]
    pre = b(torch.zeros(3, 1024), start=-2)
    assert pre[:, 1024:1032].argmax(1).tolist() == [0, 0, 0]
    assert pre[:, 1032:1034].tolist() == [[0, 1], [0, 1], [0, 1]]
    assert torch.equal(b.extras(4, 5), b(audio, start=4)[:, 1024:])


def test_configurable_dims_1059_variant():
    cfg = ConditionConfig(use_shape=False, audio_dim=1043)
    assert cfg.dim == 1059
    b = ConditionBuilder(cfg, eye_open=torch.ones(1, 2), eye_ball=torch.ones(1, 6))
    assert b(np.zeros((4, 1043), np.float32)).shape == (4, 1059)
    audio_only = ConditionBuilder(
        ConditionConfig(
            audio_dim=16,
            use_emotion=False,
            use_eye_open=False,
            use_eye_ball=False,
            use_shape=False,
        )
    )
    x = torch.randn(3, 16)
    assert torch.equal(audio_only(x), x)
    with pytest.raises(ValueError):
        b(torch.zeros(4, 1024))
    with pytest.raises(ValueError):
        ConditionBuilder(eye_open=torch.ones(1, 2), eye_ball=torch.ones(1, 6))  # no shape code
    with pytest.raises(ValueError):
        ConditionBuilder(
            eye_open=torch.ones(1, 3), eye_ball=torch.ones(1, 6), shape_code=torch.zeros(63)
        )


def test_the_landmark_block_of_use_lmk_comes_last_flattened():
    from talkinghead.methods.ditto.motion.conditions import condition_layout

    cfg = ConditionConfig(**condition_layout({"use_lmk": True}))
    assert cfg.use_landmarks and cfg.dim == 1103 + 478 * 3
    assert cfg.blocks[-2:] == (("shape", 63), ("landmarks", 1434))
    mesh = np.arange(478 * 3, dtype=np.float32).reshape(478, 3) / 1000
    cond = _builder(config=cfg, landmarks=mesh)(torch.zeros(4, 1024))
    # train-motion's layout: x, y, z of point 0, then point 1, ..., the same on every frame
    assert torch.equal(cond[:, -1434:], torch.from_numpy(mesh.reshape(-1)).expand(4, -1))
    assert torch.equal(cond[:, 1040:1103], -torch.arange(63.0).expand(4, 63))
    with pytest.raises(ValueError, match="pass landmarks"):
        _builder(config=cfg)
    with pytest.raises(ValueError, match="1434 values"):
        _builder(config=cfg, landmarks=mesh[:468])
    assert not ConditionConfig().use_landmarks  # the release's layout leaves it out
