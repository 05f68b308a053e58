"""Clip-wise motion generation: long sequences from a fixed 80-frame motion model.

The motion model samples one window of ``seq_frames`` (80) motion frames from
the window's per-frame conditions and one conditioning motion frame. A
sequence of any length is covered by windows that start every
``valid = seq_frames - overlap`` frames:

* window ``k`` starts at frame ``k * valid``; the last window(s) are padded by
  repeating the last condition row;
* window ``k`` is conditioned on the motion of frame ``k * valid - 1`` as it
  stood after window ``k - 1`` (the source motion for the first window, and
  again every ``fix_cond_every`` windows when set);
* a new window is cross-faded linearly into the end of the motion so far over
  ``fuse_length`` frames (weight ``j / fuse_length`` on the new window at the
  ``j``-th fused frame), then its remaining frames are appended;
* after each window a moving average (``smooth_kernel`` = 3) over the
  scale/pose/translation dims (the first 202) is applied to the fused frames
  and the first appended one (to all of the first window);
* offline, one more moving average runs over the whole sequence at the end;
* optionally the output is clipped per dim (``clip_range``).

Two fuse variants exist in the release: ``"offline"`` fades over the whole
overlap, ``"online"`` over only the last ``min(overlap, valid)`` overlap frames,
which lets a streaming caller emit frames after ``valid`` new feature frames
instead of ``overlap``.

``fuse_frames`` shortens the cross-fade (not in the release). A stream emits a
frame once no later window can fade into it, so with the release's online
setting (overlap 70, 10-frame fade) the first window's 10 real frames all wait
for the second window: 20 feature frames (0.8 s of speech) before the first
frame. Fading a new window only into the last ``fuse_frames < valid`` frames
lets the first ``valid - fuse_frames`` real frames leave after the first window:
`ClipwiseConfig.low_latency` (overlap 70, 5-frame fade) needs 10 feature frames
(0.4 s) at the release's window cost; the price is a shorter seam between
windows (see docs/ditto.md for the measured jumps).

`ClipwiseGenerator` runs this offline (`generate`) or incrementally
(`push` / `flush`). Both paths run the same windows on the same data, so under
the same `ClipwiseConfig` (and an equally seeded generator) they return the same
motion, whatever the chunking. The release's two drivers differ in settings,
which `ClipwiseConfig()` and `ClipwiseConfig.release_online()` reproduce.

Deliberate departures from the release's streaming worker (each tested):

* **Any overlap works.** The release starts emitting at frame
  ``seq_frames - fuse_length`` of the prefixed stream, which is the first real
  frame only when ``overlap >= 40``; with overlap 10 it silently drops 60
  frames. Here output starts at the first frame after the prefix and each frame
  is emitted as soon as no later window can change it.
* **Never more frames than features.** The release's padded last window emits
  frames for the padding too (210 for 200 features); output here is exactly N.
* **Short streams produce output.** The release emits nothing when the whole
  stream fits in the first window; here `flush` emits everything.
* **Final smoothing is a setting**, not a property of the driver, and streaming
  with it on equals offline exactly (frames leave ``smooth_kernel // 2`` frames later).

Both schedules of the release are kept as settings: offline starts windows until
one would start past the end (`ClipwiseConfig.num_windows`), streaming stops
after the first window that needs padding (``single_padded_window``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal, Protocol

import numpy as np
import torch

from talkinghead.methods.ditto.motion.format import POSE_DIMS

FuseMode = Literal["offline", "online"]


class WindowSampler(Protocol):
    """Samples one window of motion: ``(cond_frame [B, D], cond [B, S, C], generator) -> [B, S, D]``.

    ``S`` is `ClipwiseConfig.seq_frames` (80) and ``D`` the motion dim (265).
    All randomness must come from ``generator`` for runs to be reproducible.
    """

    def __call__(
        self, cond_frame: torch.Tensor, cond: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor: ...


@dataclass(frozen=True)
class ClipwiseConfig:
    """Window schedule, fusion and smoothing; defaults are the release's offline driver."""

    seq_frames: int = 80
    overlap: int = 10  # release: overlap_v2
    fuse: FuseMode = "offline"  # release: online_mode
    smooth_kernel: int = 3  # release: smo_k_d; <= 1 disables smoothing
    smooth_dims: int = POSE_DIMS  # scale, pose and translation; exp is never smoothed
    # Reset the conditioning frame to the source motion after every n-th window (0: never);
    # release: fix_kp_cond. `fix_cond_keep` = (start, end) dims still taken from the motion
    # (release: fix_kp_cond_dim).
    fix_cond_every: int = 0
    fix_cond_keep: tuple[int, int] | None = None
    # One more moving average over the finished sequence (release: offline only).
    final_smoothing: bool = True
    # Stop after the first window that reaches past the end (release: streaming) instead of
    # starting windows until a window would start past the end (release: offline).
    single_padded_window: bool = False
    # Cross-fade length in frames (None: the fuse mode's, above); at most `overlap`.
    fuse_frames: int | None = None

    def __post_init__(self) -> None:
        if self.seq_frames < 1:
            raise ValueError(f"seq_frames must be >= 1, got {self.seq_frames}")
        if not 0 <= self.overlap < self.seq_frames:
            raise ValueError(f"overlap must be in [0, {self.seq_frames}), got {self.overlap}")
        if self.fuse not in ("offline", "online"):
            raise ValueError(f"fuse must be 'offline' or 'online', got {self.fuse!r}")
        if self.fix_cond_every < 0:
            raise ValueError("fix_cond_every must be >= 0")
        if self.fuse_frames is not None and not 0 <= self.fuse_frames <= self.overlap:
            raise ValueError(
                f"fuse_frames must be in [0, overlap={self.overlap}], got {self.fuse_frames}"
            )

    @classmethod
    def release_online(cls, overlap: int = 70, **overrides: object) -> ClipwiseConfig:
        """The release's streaming settings: online fuse, no final smoothing, one padded window.

        The authors run streaming with an overlap of 70-75 frames. The release
        also prepends ``overlap`` frames of zero-audio conditions; pass those as
        the generator's ``prefix``.
        """
        base = cls(overlap=overlap, fuse="online", final_smoothing=False, single_padded_window=True)
        return replace(base, **overrides)  # type: ignore[arg-type]

    @classmethod
    def low_latency(
        cls, overlap: int = 70, fuse_frames: int = 5, **overrides: object
    ) -> ClipwiseConfig:
        """Online settings whose first frame needs ``seq_frames - overlap`` feature frames.

        The release's online setting with each new window faded into only the last
        ``fuse_frames`` frames, all still unsent: the first ``valid - fuse_frames`` real
        frames are final after the first window (10 feature frames, 0.4 s, with the
        defaults, against the release's 20), at the same window count.
        """
        return cls.release_online(overlap=overlap, fuse_frames=fuse_frames, **overrides)

    def first_frame_features(self, prefix: int | None = None) -> int:
        """Feature frames a stream needs before its first frame leaves `ClipwiseGenerator.push`.

        ``prefix``: condition rows before the stream (default ``overlap``, the release's
        online prefix). Window k settles the frames before ``k * valid + seq_frames -
        fuse_length``, and the final smoothing (when on) holds a frame back until its right
        neighbours are settled too.
        """
        prefix = self.overlap if prefix is None else prefix
        lag = self.smooth_kernel // 2 if self.final_smoothing and self.smooth_kernel > 1 else 0
        k = 0
        while k * self.valid + self.seq_frames - self.fuse_length - lag <= prefix:
            k += 1
        return k * self.valid + self.seq_frames - prefix

    @property
    def valid(self) -> int:
        """New frames per window (release: valid_clip_len)."""
        return self.seq_frames - self.overlap

    @property
    def fuse_length(self) -> int:
        """Frames a new window is cross-faded into."""
        if self.fuse_frames is not None:
            return self.fuse_frames
        if self.fuse == "online":
            return min(self.overlap, self.valid)
        return self.overlap

    def num_windows(self, total: int) -> int:
        """Windows run for a sequence of ``total`` frames (prefix included).

        The offline schedule, like the release's, starts a window wherever one
        would start before the end: with overlap 10, 1..70 frames take one window
        and 71..140 two (so 80 frames take two; the second re-samples frames
        70..79 with past context and is cross-faded in).
        """
        if total <= 0:
            return 0
        starts = -(-total // self.valid)  # windows starting before the end
        if self.single_padded_window:
            # Windows while the previous one fitted entirely: the first s with s + S > total.
            first_padded = max(0, -(-(total - self.seq_frames + 1) // self.valid))
            return min(starts, first_padded + 1)
        return starts


# ---------------------------------------------------------------------------- primitives


def fuse_weights(length: int, *, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """Weights of the new window over a cross-fade of ``length`` frames: ``j / length``."""
    return torch.arange(length, dtype=dtype, device=device) / max(length, 1)


def cross_fade(old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """Linear cross-fade of ``[B, F, D]`` frames from ``old`` to ``new`` (first frame all old)."""
    alpha = fuse_weights(old.shape[1], dtype=old.dtype, device=old.device)[:, None]
    return old * (1 - alpha) + new * alpha


def smoothed_range(
    seq: torch.Tensor, start: int, end: int, kernel: int = 3, dims: int = POSE_DIMS
) -> torch.Tensor:
    """Frames ``[start, end)`` of ``seq [B, L, D]`` with dims ``[:dims]`` moving-averaged.

    The average is centred over ``kernel`` frames, cut at the ends of ``seq`` (the
    mean is over the frames that exist) and reads the unsmoothed input. The sum
    runs over fixed offsets, so a frame's value depends only on its own
    neighbourhood, bit for bit, whatever else ``seq`` holds.
    """
    n = seq.shape[1]
    start, end = max(start, 0), min(end, n)
    out = seq[:, start:end].clone()
    if kernel <= 1 or end <= start:
        return out
    half = kernel // 2
    total = torch.zeros_like(out[..., :dims])
    for off in range(-half, half + 1):
        a, b = max(start, -off), min(end, n - off)  # frames whose neighbour at `off` exists
        if a < b:
            total[:, a - start : b - start] += seq[:, a + off : b + off, :dims]
    idx = torch.arange(start, end, device=seq.device)
    count = (idx + half).clamp(max=n - 1) - (idx - half).clamp(min=0) + 1
    out[..., :dims] = total / count.to(seq.dtype)[:, None]
    return out


def moving_average(
    seq: torch.Tensor, start: int, end: int, kernel: int = 3, dims: int = POSE_DIMS
) -> torch.Tensor:
    """A copy of ``seq [B, L, D]`` with frames ``[start, end)`` smoothed (see `smoothed_range`)."""
    out = seq.clone()
    start, end = max(start, 0), min(end, seq.shape[1])
    out[:, start:end] = smoothed_range(seq, start, end, kernel, dims)
    return out


def clip_motion(motion: torch.Tensor, clip_range: torch.Tensor | None) -> torch.Tensor:
    """Clamp each dim to ``clip_range[0] <= x <= clip_range[1]`` (release: v_min_max_for_clip)."""
    if clip_range is None:
        return motion
    lo, hi = clip_range[0].to(motion), clip_range[1].to(motion)
    return torch.minimum(torch.maximum(motion, lo), hi)


# ---------------------------------------------------------------------------- window state


class _Windows:
    """Motion after each window, in absolute frame indices.

    Frames live in a preallocated buffer (``buf[:, i]`` is frame ``off + i``);
    frames before `keep` may be dropped when the buffer has to grow, so a stream
    runs in bounded memory and a long offline run copies each frame O(1) times.
    """

    def __init__(
        self,
        config: ClipwiseConfig,
        sampler: WindowSampler,
        source: torch.Tensor,
        generator: torch.Generator | None,
    ) -> None:
        self.cfg, self.sampler, self.source, self.generator = config, sampler, source, generator
        self.cond_frame = source
        self.buf: torch.Tensor | None = None
        self.off = 0
        self.end = 0  # frames [off, end) are valid
        self.keep = 0  # frames before this are no longer needed
        self.count = 0

    @property
    def next_start(self) -> int:
        return self.count * self.cfg.valid

    @property
    def settled(self) -> int:
        """Frames no later window can change: everything before the next cross-fade."""
        return max(self.end - self.cfg.fuse_length, 0)

    def view(self, end: int | None = None) -> torch.Tensor:
        """Frames ``[off, end)`` (default: all valid ones)."""
        assert self.buf is not None
        end = self.end if end is None else min(end, self.end)
        return self.buf[:, : end - self.off]

    def reserve(self, end: int) -> None:
        """Make room for frames up to ``end``, dropping those before `keep` when reallocating."""
        if self.buf is not None and end - self.off <= self.buf.shape[1]:
            return
        keep = max(self.keep, self.off)
        b, d = self.source.shape
        new = self.source.new_empty(b, max(2 * (end - keep), self.cfg.seq_frames), d)
        if self.buf is not None and self.end > keep:
            new[:, : self.end - keep] = self.buf[:, keep - self.off : self.end - self.off]
        self.buf, self.off = new, keep

    def step(self, cond: torch.Tensor) -> None:
        cfg = self.cfg
        pred = self.sampler(self.cond_frame, cond, self.generator)
        expected = (cond.shape[0], cfg.seq_frames, self.source.shape[-1])
        if tuple(pred.shape) != expected:
            raise ValueError(f"window sampler returned {tuple(pred.shape)}, expected {expected}")
        start, f, ov = self.next_start, cfg.fuse_length, cfg.overlap
        self.reserve(start + cfg.seq_frames)
        buf, o = self.buf, self.off
        assert buf is not None
        if self.count == 0:
            buf[:, : cfg.seq_frames] = pred
            lo, hi = 0, cfg.seq_frames
        else:
            a = self.end - f - o
            buf[:, a : a + f] = cross_fade(buf[:, a : a + f], pred[:, ov - f : ov])
            buf[:, self.end - o : start + cfg.seq_frames - o] = pred[:, ov:]
            lo, hi = start + ov - f, start + ov + 1
        self.end = start + cfg.seq_frames
        seq = self.view()
        seq[:, lo - o : hi - o] = smoothed_range(
            seq, lo - o, hi - o, cfg.smooth_kernel, cfg.smooth_dims
        )
        self.count += 1
        # The next window starts `overlap` frames before our end; condition it on the frame before.
        last = buf[:, self.end - ov - 1 - o].clone()
        if cfg.fix_cond_every and self.count % cfg.fix_cond_every == 0:
            cond_frame = self.source.clone()
            if cfg.fix_cond_keep is not None:
                a, b = cfg.fix_cond_keep
                cond_frame[:, a:b] = last[:, a:b]
            self.cond_frame = cond_frame
        else:
            self.cond_frame = last


def _window_cond(feats: torch.Tensor, start: int, seq_frames: int) -> torch.Tensor:
    """Rows ``[start, start + seq_frames)`` of ``feats [B, L, C]``, padded with the last row."""
    cond = feats[:, start : start + seq_frames]
    if cond.shape[1] < seq_frames:
        pad = feats[:, -1:].expand(-1, seq_frames - cond.shape[1], -1)
        cond = torch.cat([cond, pad], 1)
    return cond


# ---------------------------------------------------------------------------- generator


class ClipwiseGenerator:
    """Clip-wise motion from per-frame conditions, offline or incrementally.

    Args:
        sampler: samples one window (`WindowSampler`), e.g. DDIM over the motion model.
        source_motion: [D] (or [B, D]) motion of the source frame, the first window's
            conditioning frame (`format.dict_to_motion` of the source's keypoint info).
        config: schedule and smoothing; defaults are the release's offline settings.
        clip_range: optional [2, D] per-dim (min, max) applied to the output.
        prefix: optional [P, C] (or [B, P, C]) condition rows put before the sequence and
            not returned; the release's streaming driver uses ``overlap`` rows of zero-audio
            conditions. Its frames join the windows and the final smoothing.
        generator: passed to every sampler call by `push` / `flush` (and by `generate`
            unless it gets its own).

    Inputs are ``[N, C]`` (outputs ``[N, D]``) or batched ``[B, N, C]`` (outputs
    ``[B, N, D]``; all sequences of a batch have the same length). A [D] source
    or [P, C] prefix is shared by the whole batch.
    """

    def __init__(
        self,
        sampler: WindowSampler,
        source_motion: torch.Tensor | np.ndarray,
        config: ClipwiseConfig | None = None,
        *,
        clip_range: torch.Tensor | np.ndarray | None = None,
        prefix: torch.Tensor | np.ndarray | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        self.sampler = sampler
        self.config = config or ClipwiseConfig()
        self.source = torch.as_tensor(source_motion, dtype=torch.float32)
        if self.source.ndim not in (1, 2):
            raise ValueError(f"source_motion must be [D] or [B, D], got {tuple(self.source.shape)}")
        self.dim = self.source.shape[-1]
        self.clip_range = None if clip_range is None else torch.as_tensor(clip_range)
        if self.clip_range is not None and tuple(self.clip_range.shape) != (2, self.dim):
            raise ValueError(
                f"clip_range must be [2, {self.dim}], got {tuple(self.clip_range.shape)}"
            )
        self.prefix = None if prefix is None else torch.as_tensor(prefix, dtype=torch.float32)
        self.generator = generator
        self.reset()

    # ---- shared helpers

    def _batch(self, features: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, bool]:
        feats = torch.as_tensor(features)
        if not feats.is_floating_point():
            feats = feats.float()
        batched = feats.ndim == 3
        if feats.ndim == 2:
            feats = feats[None]
        elif not batched:
            raise ValueError(f"features must be [N, C] or [B, N, C], got {tuple(feats.shape)}")
        if self.source.ndim == 2 and (not batched or feats.shape[0] != self.source.shape[0]):
            raise ValueError(
                f"source_motion has batch {self.source.shape[0]}; features {tuple(feats.shape)}"
            )
        return feats, batched

    def _source_for(self, feats: torch.Tensor) -> torch.Tensor:
        src = self.source.to(device=feats.device, dtype=feats.dtype)
        return src.expand(feats.shape[0], -1) if src.ndim == 1 else src

    def _prefix_for(self, feats: torch.Tensor) -> torch.Tensor:
        b, _, c = feats.shape
        if self.prefix is None:
            return feats.new_zeros(b, 0, c)
        pre = self.prefix.to(device=feats.device, dtype=feats.dtype)
        pre = pre.expand(b, -1, -1) if pre.ndim == 2 else pre
        if pre.ndim != 3 or pre.shape[0] != b or pre.shape[2] != c:
            raise ValueError(
                f"prefix {tuple(self.prefix.shape)} does not fit features [{b}, N, {c}]"
            )
        return pre

    def _finish(self, frames: torch.Tensor, batched: bool) -> torch.Tensor:
        frames = clip_motion(frames, self.clip_range)
        return frames if batched else frames[0]

    def _final_range(self, seq: torch.Tensor, start: int, end: int) -> torch.Tensor:
        """Finished frames ``[start, end)`` of the motion ``seq`` (cut at the sequence end)."""
        if not self.config.final_smoothing:
            return seq[:, start:end]
        return smoothed_range(seq, start, end, self.config.smooth_kernel, self.config.smooth_dims)

    # ---- offline

    @torch.no_grad()
    def generate(
        self,
        features: torch.Tensor | np.ndarray,
        *,
        generator: torch.Generator | None = None,
        with_prefix: bool = False,
        progress: Callable[[int, int], None] | None = None,
    ) -> torch.Tensor:
        """Motion for a whole sequence: ``[N, C] -> [N, D]`` (or batched), exactly N frames.

        ``with_prefix`` also returns the prefix frames in front (``P + N``); the first
        frame is the release's relative-driving reference ``d0``. ``progress`` is called
        with (windows done, windows in all) before the first window and after each.
        Does not touch the streaming state.
        """
        cfg = self.config
        feats, batched = self._batch(features)
        b, n = feats.shape[:2]
        if n == 0:
            return self._finish(feats.new_zeros(b, 0, self.dim), batched)
        prefix = self._prefix_for(feats)
        feats = torch.cat([prefix, feats], 1)
        total = feats.shape[1]
        windows = _Windows(cfg, self.sampler, self._source_for(feats), generator or self.generator)
        num = cfg.num_windows(total)
        windows.reserve((num - 1) * cfg.valid + cfg.seq_frames)  # one allocation for the run
        if progress is not None:
            progress(0, num)
        for k in range(num):
            windows.step(_window_cond(feats, k * cfg.valid, cfg.seq_frames))
            if progress is not None:
                progress(k + 1, num)
        first = 0 if with_prefix else prefix.shape[1]
        return self._finish(self._final_range(windows.view(total), first, total), batched)

    # ---- incremental

    def reset(self, *, generator: torch.Generator | None = None) -> None:
        """Start a new stream (optionally with a new generator); pending frames are dropped."""
        if generator is not None:
            self.generator = generator
        self._windows: _Windows | None = None
        self._feats: torch.Tensor | None = None  # condition rows [feat_start, received)
        self._feat_start = 0
        self._received = 0  # rows so far, prefix included
        self._prefix_len = 0
        self._done = 0  # frames emitted or skipped (prefix)
        self._batched: bool | None = None
        self._first_frame: torch.Tensor | None = None

    @property
    def first_frame(self) -> torch.Tensor | None:
        """Finished motion of the stream's first frame (the first prefix frame if any).

        Known as soon as it is final (with a prefix, before any output frame) and kept
        after `flush` until the next stream starts; the release's streaming driver uses
        it as the relative-driving reference ``d0``.
        """
        return self._first_frame

    @property
    def pending(self) -> int:
        """Feature frames received but not yet returned."""
        return self._received - self._done

    @torch.no_grad()
    def push(self, features: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Add condition rows ``[n, C]`` (or ``[B, n, C]``); returns the newly finished frames.

        Frames come out in order, each once, as soon as no later window can change them;
        over a whole stream `push` + `flush` returns exactly what `generate` returns for
        the concatenated rows.
        """
        cfg = self.config
        feats, batched = self._batch(features)
        if self._batched is None:
            self._start(feats, batched)
        elif batched != self._batched or feats.shape[0] != self._feats.shape[0]:  # type: ignore[union-attr]
            raise ValueError("all chunks of a stream must have the same batch layout")
        self._append(feats)
        w = self._windows
        assert w is not None
        while w.next_start + cfg.seq_frames <= self._received:
            self._step()
        # Without the stream's end, the final average of a frame also needs its right neighbours.
        lag = cfg.smooth_kernel // 2 if cfg.final_smoothing and cfg.smooth_kernel > 1 else 0
        return self._emit(w.settled - lag, end=None)

    @torch.no_grad()
    def flush(self) -> torch.Tensor:
        """End the stream: run the last (padded) windows and return the remaining frames.

        The generator is then ready for a new stream (same settings and generator object).
        """
        if self._batched is None or self._received == self._prefix_len:
            out = torch.zeros(1, 0, self.dim)
            batched = bool(self._batched)
            if self._feats is not None:
                out = self._feats.new_zeros(self._feats.shape[0], 0, self.dim)
            self.reset()
            return self._finish(out, batched)
        w = self._windows
        assert w is not None
        total = self._received
        while w.count < self.config.num_windows(total):
            self._step()
        out = self._emit(total, end=total)
        first = self._first_frame
        self.reset()
        self._first_frame = first  # still readable until the next stream starts
        return out

    def _start(self, feats: torch.Tensor, batched: bool) -> None:
        self._batched = batched
        self._first_frame = None
        prefix = self._prefix_for(feats)
        self._prefix_len = self._done = prefix.shape[1]
        self._feats, self._received = prefix, prefix.shape[1]
        self._windows = _Windows(self.config, self.sampler, self._source_for(feats), self.generator)

    def _append(self, feats: torch.Tensor) -> None:
        assert self._feats is not None
        if feats.shape[2] != self._feats.shape[2]:
            raise ValueError(
                f"condition dim changed from {self._feats.shape[2]} to {feats.shape[2]}"
            )
        self._feats = torch.cat([self._feats, feats.to(self._feats)], 1)
        self._received += feats.shape[1]

    def _step(self) -> None:
        w = self._windows
        assert w is not None and self._feats is not None
        start = w.next_start
        rows = self._feats[:, start - self._feat_start : self._received - self._feat_start]
        w.step(_window_cond(rows, 0, self.config.seq_frames))
        # Condition rows before the next window are never read again.
        cut = w.next_start - self._feat_start
        if cut > 0:
            self._feats, self._feat_start = self._feats[:, cut:], w.next_start

    def _emit(self, upto: int, end: int | None) -> torch.Tensor:
        """Final frames ``[done, upto)``; ``end`` is the stream length once known."""
        w = self._windows
        assert w is not None and self._feats is not None
        batched = bool(self._batched)
        if w.buf is None:  # no window yet
            return self._finish(self._feats.new_zeros(self._feats.shape[0], 0, self.dim), batched)
        seq = w.view(end)
        if self._first_frame is None and upto >= 1:
            # Frame 0 is final now, and nothing before `keep` (still 0) has been dropped.
            self._first_frame = self._finish(self._final_range(seq, 0, 1)[:, 0], batched)
        if upto <= self._done:
            return self._finish(seq.new_zeros(seq.shape[0], 0, self.dim), batched)
        frames = self._final_range(seq, self._done - w.off, upto - w.off)
        self._done = upto
        # Keep the neighbours of unfinished frames and the next window's conditioning frame
        # (which, with a long overlap, lies before the finished frames).
        cfg = self.config
        w.keep = max(0, min(upto - cfg.smooth_kernel // 2, w.end + cfg.valid - cfg.overlap - 1))
        return self._finish(frames, batched)
