"""Source loading: images by content, EXIF, alpha, bit depth, resizing, videos via PyAV."""

from __future__ import annotations

import shutil
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from _conformance import MEDIA_DIR, skip_missing
from _hostile_media import noise_video, png_bomb, truncated
from talkinghead.errors import MediaError
from talkinghead.media.source import (
    DEFAULT_MAX_PIXELS,
    PixelLimitError,
    load_source,
    target_size,
)


@pytest.fixture(scope="module")
def portrait() -> Path:
    path = MEDIA_DIR / "ditto_example_face.jpg"
    if not path.exists():
        skip_missing(f"{MEDIA_DIR}")
    return path


def check_frame(frame: np.ndarray, h: int, w: int) -> None:
    assert frame.shape == (h, w, 3) and frame.dtype == np.uint8 and frame.flags.c_contiguous


def test_real_portrait(portrait):
    src = load_source(portrait)
    assert src.is_image and src.fps is None and len(src.frames) == 1 and src.path == portrait
    check_frame(src.frames[0], 1432, 1432)
    assert src.size == (1432, 1432)
    assert 20 < src.frames[0].mean() < 235


def test_jpeg_named_png_is_read_by_content(portrait, tmp_path):
    renamed = tmp_path / "image.png"  # how the release ships its example portrait
    shutil.copy(portrait, renamed)
    np.testing.assert_array_equal(load_source(renamed).frames[0], load_source(portrait).frames[0])


def test_exif_orientation_is_applied(tmp_path):
    a = np.zeros((40, 80, 3), np.uint8)
    a[:, :40] = (255, 0, 0)  # left half red, right half blue
    a[:, 40:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    path = tmp_path / "rotated.jpg"
    Image.fromarray(a).save(path, quality=95, exif=exif)
    frame = load_source(path).frames[0]
    check_frame(frame, 80, 40)
    # Clockwise: the left (red) half ends up on top.
    assert frame[:30, :, 0].mean() > 200 and frame[:30, :, 2].mean() < 50
    assert frame[50:, :, 2].mean() > 200 and frame[50:, :, 0].mean() < 50


def test_png_with_alpha_is_flattened_on_white(tmp_path):
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., :3] = (10, 200, 30)
    rgba[:, :15, 3] = 255  # left opaque, right fully transparent
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba, "RGBA").save(path)
    frame = load_source(path).frames[0]
    check_frame(frame, 20, 30)
    assert (frame[:, :15] == (10, 200, 30)).all()
    assert (frame[:, 15:] == 255).all()


def test_gray_palette_and_16_bit(tmp_path):
    gray = tmp_path / "gray.png"
    Image.fromarray(np.full((6, 8), 77, np.uint8), "L").save(gray)
    assert (load_source(gray).frames[0] == 77).all()

    deep = tmp_path / "deep.png"
    Image.fromarray(np.full((6, 8), 40000, np.uint16)).save(deep)  # 16-bit grayscale
    assert (load_source(deep).frames[0] == round(40000 / 257)).all()

    pal = tmp_path / "pal.gif"
    Image.fromarray(np.full((6, 8, 3), (200, 10, 10), np.uint8)).convert("P").save(pal)
    frame = load_source(pal).frames[0]
    check_frame(frame, 6, 8)
    assert frame[0, 0, 0] > 150 and frame[0, 0, 1] < 60


def test_huge_image_is_resized_with_even_sides(tmp_path):
    path = tmp_path / "huge.jpg"
    grad = np.linspace(0, 255, 2999, dtype=np.float32).astype(np.uint8)
    Image.fromarray(np.broadcast_to(grad[None, :, None], (2001, 2999, 3)).copy()).save(path)
    frame = load_source(path).frames[0]
    # 2001 * 1920 / 2999 = 1281.07 -> 1281 -> floored to even.
    check_frame(frame, 1280, 1920)
    assert target_size(2001, 2999) == (1280, 1920)
    assert abs(int(frame[640, 960, 0]) - 128) <= 3  # content scaled, not cropped
    check_frame(load_source(path, max_side=64).frames[0], 42, 64)  # 42.7 -> 43 -> 42
    check_frame(load_source(path, max_side=None).frames[0], 2000, 2998)


def test_odd_sides_are_made_even(tmp_path):
    path = tmp_path / "odd.png"
    Image.fromarray(np.full((51, 101, 3), 128, np.uint8)).save(path)
    frame = load_source(path).frames[0]
    check_frame(frame, 50, 100)
    assert (frame == 128).all()
    assert target_size(3000, 1000) == (1920, 640)  # portrait: height is the long side


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("notes.txt", b"hello, this is text\n" * 10, "not an image or video|not a readable"),
        ("fake.png", b"plain text pretending to be a png\n", "fake.png"),
        ("empty.jpg", b"", "empty"),
        ("truncated.jpg", None, "truncated.jpg"),
        ("sound.wav", None, "no picture"),
    ],
    ids=["text", "text-named-png", "empty", "truncated-jpeg", "audio-only"],
)
def test_unreadable_files(tmp_path, name, content, message):
    path = tmp_path / name
    if name == "truncated.jpg":
        Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(path)
        content = path.read_bytes()[:200]
    elif name == "sound.wav":
        import soundfile

        soundfile.write(path, np.zeros(1600, np.float32), 16000)
        content = path.read_bytes()
    path.write_bytes(content)
    with pytest.raises(MediaError, match=message) as err:
        load_source(path)
    assert name in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(MediaError, match=r"nope\.jpg.*not found"):
        load_source(tmp_path / "nope.jpg")


def write_video(path: Path, n: int, fps: int = 25, h: int = 48, w: int = 64, rotation=None):
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for i in range(n):
            a = np.full((h, w, 3), 20 * i, np.uint8)
            a[:, : w // 2] = 255  # left half white
            frame = av.VideoFrame.from_ndarray(a, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def test_video(tmp_path):
    path = tmp_path / "clip.mp4"
    write_video(path, 10, fps=25)
    src = load_source(path)
    assert not src.is_image and src.fps == 25.0 and len(src.frames) == 10
    for i, frame in enumerate(src.frames):
        check_frame(frame, 48, 64)
        assert abs(float(frame[:, 40:].mean()) - 20 * i) < 6  # frame order kept
    assert len(load_source(path, max_frames=4).frames) == 4
    small = load_source(path, max_side=32)
    check_frame(small.frames[0], 24, 32)


def test_video_recognised_by_content_and_other_fps(tmp_path):
    path = tmp_path / "looks_like.jpg"
    write_video(path, 3, fps=30)
    src = load_source(path)
    assert not src.is_image and src.fps == 30.0 and len(src.frames) == 3


def test_video_rotation_metadata_is_applied(tmp_path):
    path = tmp_path / "phone.mp4"
    write_video(path, 2, rotation=90)  # displayed rotated 90 degrees counter-clockwise
    frame = load_source(path).frames[0]
    check_frame(frame, 64, 48)
    # Counter-clockwise: the left (white) half ends up at the bottom.
    assert frame[40:].mean() > 230 and frame[:24].mean() < 30


# ---------------------------------------------------------------------------- broken files


@pytest.mark.parametrize("fraction", [0.8, 0.4])
def test_a_truncated_jpeg_is_refused_not_filled_in(portrait, tmp_path, fraction):
    # At 80 % FFmpeg used to fill the missing rows (a green band, exit 0); at 40 % the
    # half-grey picture showed "no face". Either way the file is broken: say so.
    cut = truncated(portrait, fraction, tmp_path / "cut.jpg")
    with pytest.raises(MediaError, match=r"cut\.jpg: the image is truncated or damaged"):
        load_source(cut)


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "GIF", "TIFF"])
def test_other_truncated_images_are_refused(tmp_path, fmt):
    whole = tmp_path / f"whole.{fmt.lower()}"
    noise = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    Image.fromarray(noise).save(whole, fmt)
    assert load_source(whole).size == (120, 160)
    with pytest.raises(MediaError, match="truncated or damaged"):
        load_source(truncated(whole, 0.7, tmp_path / f"cut.{fmt.lower()}"))


def test_a_damaged_png_is_refused(tmp_path):
    path = tmp_path / "flipped.png"
    y, x = np.mgrid[0:120, 0:160]
    Image.fromarray(np.stack([x, y, x + y], -1).astype(np.uint8)).save(path)
    data = bytearray(path.read_bytes())
    for k in range(len(data) // 2, len(data) // 2 + 40):
        data[k] ^= 0x55  # bit errors in the middle of the compressed pixels
    path.write_bytes(bytes(data))
    with pytest.raises(MediaError, match="truncated or damaged"):
        load_source(path)


def test_a_truncated_video_is_refused(tmp_path):
    whole = noise_video(tmp_path / "whole.mp4")
    assert len(load_source(whole).frames) == 30
    cut = truncated(whole, 0.9, tmp_path / "cut.mp4")
    with pytest.raises(MediaError, match=r"cut\.mp4: the video is (damaged|truncated)"):
        load_source(cut)
    # The frames that are asked for are whole: reading only those is fine.
    assert len(load_source(cut, max_frames=5).frames) == 5


def test_a_video_with_a_damaged_frame_is_refused(tmp_path):
    # MPEG-4 part 2 marks a frame it could only conceal as corrupt.
    cut = truncated(noise_video(tmp_path / "whole.mp4", codec="mpeg4"), 0.5, tmp_path / "c.mp4")
    with pytest.raises(MediaError, match=r"c\.mp4: the video is damaged"):
        load_source(cut)


def test_a_decompression_bomb_is_refused_from_its_header(tmp_path):
    import psutil

    bomb = png_bomb(tmp_path / "bomb.png", 12000, 12000)
    assert bomb.stat().st_size < 30_000  # ~17 KB on disk, 144 Mpx decoded
    process = psutil.Process()
    before = process.memory_info().rss
    with pytest.raises(PixelLimitError, match=r"bomb\.png: the picture is 12000x12000 pixels"):
        load_source(bomb)
    # Over Pillow's own hard limit (179 Mpx) too: refused, never handed to FFmpeg.
    with pytest.raises(PixelLimitError, match="more than the limit"):
        load_source(png_bomb(tmp_path / "huge.png", 20000, 20000))
    assert process.memory_info().rss - before < 100 * 2**20


def test_the_pixel_limit_is_configurable(tmp_path):
    image = tmp_path / "small.png"
    Image.fromarray(np.full((100, 100, 3), 9, np.uint8)).save(image)
    with pytest.raises(PixelLimitError, match="100x100 pixels"):
        load_source(image, max_pixels=9999)
    assert load_source(image, max_pixels=10000).size == (100, 100)
    assert DEFAULT_MAX_PIXELS > 7680 * 4320 * 2  # well above 8K
    assert load_source(png_bomb(tmp_path / "wide.png", 3000, 2000), max_pixels=None)
    # Videos: from the stream's header, before a frame is decoded.
    video = noise_video(tmp_path / "clip.mp4", frames=3, size=(64, 48))
    with pytest.raises(PixelLimitError, match="64x48 pixels"):
        load_source(video, max_pixels=64 * 48 - 1)
    assert len(load_source(video, max_pixels=64 * 48).frames) == 3


def test_messages_name_the_real_problem(tmp_path):
    with pytest.raises(MediaError, match=r"is a folder"):
        load_source(tmp_path)
    tiny = tmp_path / "dot.png"
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(tiny)
    with pytest.raises(MediaError, match=r"dot\.png: the picture is 1x1 pixels, too small"):
        load_source(tiny)
    thin = tmp_path / "thin.png"
    Image.fromarray(np.zeros((1, 4000, 3), np.uint8)).save(thin)
    with pytest.raises(MediaError, match=r"4000x1 pixels, too small to fit 1920"):
        load_source(thin)
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"\xff\xd8\xff\xe0" + bytes(500))  # a JPEG's first bytes, then nothing
    with pytest.raises(MediaError, match="not an image") as err:
        load_source(junk)
    assert "Errno" not in str(err.value) and "avcodec" not in str(err.value)
