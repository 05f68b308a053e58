"""MFCCs exactly as ``python_speech_features.mfcc(signal, 16000)`` computes them for SyncNet.

The SyncNet scripts read 16 kHz 16-bit PCM with ``scipy.io.wavfile`` and pass the
int16 samples straight in, so the scale matters: the energy coefficient is
``log(sum |FFT|^2 / 512)`` of integer-valued samples. `syncnet_mfcc` takes float
audio in [-1, 1] and quantises it the way that PCM export does.

Defaults (the package's): 25 ms frames every 10 ms (400 / 160 samples at 16 kHz,
the tail zero-padded to a whole frame), no window, pre-emphasis 0.97, a 512-point
FFT power spectrum / 512, 26 triangular mel filters 0 Hz - 8 kHz whose edges are
floored to FFT bins, log, orthonormal DCT-II, 13 coefficients, sinusoidal lifter
22, and coefficient 0 replaced with the log frame energy.
"""

from __future__ import annotations

import math
from decimal import ROUND_HALF_UP, Decimal
from functools import lru_cache

import numpy as np
from scipy.fft import dct

MFCC_RATE = 100  # frames per second at the default 10 ms step
_EPS = np.finfo(float).eps


def _round_half_up(x: float) -> int:
    return int(Decimal(x).quantize(Decimal("1"), rounding=ROUND_HALF_UP))


def hz_to_mel(hz: np.ndarray | float) -> np.ndarray | float:
    return 2595 * np.log10(1 + np.asarray(hz) / 700.0)


def mel_to_hz(mel: np.ndarray | float) -> np.ndarray | float:
    return 700 * (10 ** (np.asarray(mel) / 2595.0) - 1)


@lru_cache(maxsize=8)
def mel_filterbank(
    nfilt: int = 26, nfft: int = 512, sample_rate: int = 16000, low_hz: float = 0.0, high_hz=None
) -> np.ndarray:
    """[nfilt, nfft // 2 + 1] triangles between mel-spaced edges floored to FFT bins."""
    high_hz = high_hz or sample_rate / 2
    mel = np.linspace(hz_to_mel(low_hz), hz_to_mel(high_hz), nfilt + 2)
    edges = np.floor((nfft + 1) * mel_to_hz(mel) / sample_rate)
    bank = np.zeros((nfilt, nfft // 2 + 1))
    bins = np.arange(nfft // 2 + 1)
    for j in range(nfilt):
        lo, mid, hi = edges[j], edges[j + 1], edges[j + 2]
        up = (bins >= lo) & (bins < mid)
        down = (bins >= mid) & (bins < hi)
        bank[j, up] = (bins[up] - lo) / (mid - lo)
        bank[j, down] = (hi - bins[down]) / (hi - mid)
    bank.flags.writeable = False
    return bank


def frame_signal(x: np.ndarray, frame_len: int, step: int) -> np.ndarray:
    """[num_frames, frame_len]: 1 + ceil((n - frame_len) / step) frames, zero-padded tail."""
    n = len(x)
    count = 1 if n <= frame_len else 1 + math.ceil((n - frame_len) / step)
    padded = np.concatenate([x, np.zeros(max((count - 1) * step + frame_len - n, 0))])
    idx = np.arange(frame_len)[None, :] + step * np.arange(count)[:, None]
    return padded[idx]


def mfcc(
    signal: np.ndarray,
    sample_rate: int = 16000,
    winlen: float = 0.025,
    winstep: float = 0.01,
    numcep: int = 13,
    nfilt: int = 26,
    nfft: int = 512,
    preemph: float = 0.97,
    ceplifter: int = 22,
) -> np.ndarray:
    """MFCCs [num_frames, numcep] of a 1-D signal (python_speech_features semantics)."""
    x = np.asarray(signal, dtype=np.float64)
    if x.ndim != 1 or len(x) == 0:
        raise ValueError(f"expected a non-empty 1-D signal, got shape {x.shape}")
    x = np.append(x[0], x[1:] - preemph * x[:-1])
    frames = frame_signal(
        x, _round_half_up(winlen * sample_rate), _round_half_up(winstep * sample_rate)
    )
    power = np.square(np.abs(np.fft.rfft(frames, nfft))) / nfft
    energy = power.sum(axis=1)
    energy = np.where(energy == 0, _EPS, energy)
    feat = power @ mel_filterbank(nfilt, nfft, sample_rate).T
    feat = np.where(feat == 0, _EPS, feat)
    ceps = dct(np.log(feat), type=2, axis=1, norm="ortho")[:, :numcep]
    if ceplifter > 0:
        n = np.arange(ceps.shape[1])
        ceps = ceps * (1 + (ceplifter / 2.0) * np.sin(np.pi * n / ceplifter))
    ceps[:, 0] = np.log(energy)
    return ceps


def to_pcm16(audio: np.ndarray) -> np.ndarray:
    """Float audio in [-1, 1] -> the int16 sample values (as float64) a 16-bit wav holds."""
    return np.clip(np.rint(np.asarray(audio, dtype=np.float64) * 32768.0), -32768, 32767)


def syncnet_mfcc(audio_16k: np.ndarray) -> np.ndarray:
    """SyncNet's audio input: MFCC [13, num_frames] at 100 Hz of float 16 kHz mono audio."""
    return mfcc(to_pcm16(audio_16k), 16000).T
