"""Evaluation toolkit: PSNR, SSIM, LPIPS, FID, LSE-D/LSE-C, CSIM and FVD as one API.

``evaluate(pred, ref, audio=None, metrics=...)`` scores a pair of videos, or two
directories paired by file name, and returns an `EvaluationResult` (a row per
video, the test-set mean, the settings, versions and weight files used). The
command is ``talkinghead evaluate``; docs/evaluation.md describes every metric.
"""

from talkinghead.eval.api import (
    DEFAULT_METRICS,
    METRICS,
    SET_METRICS,
    EvaluationResult,
    VideoScores,
    evaluate,
    parse_metrics,
)

__all__ = [
    "DEFAULT_METRICS",
    "METRICS",
    "SET_METRICS",
    "EvaluationResult",
    "VideoScores",
    "evaluate",
    "parse_metrics",
]
