"""The VQGAN losses moved to `talkinghead.models.vqgan_losses` (shared with DiffTalk's
autoencoder); this module keeps the old import path."""

from talkinghead.models.vqgan_losses import (
    LPIPS,
    PatchDiscriminator,
    VGG16Features,
    VQGANLoss,
    VQGANLossConfig,
    hinge_d_loss,
    load_lpips,
)

__all__ = [
    "LPIPS",
    "PatchDiscriminator",
    "VGG16Features",
    "VQGANLoss",
    "VQGANLossConfig",
    "hinge_d_loss",
    "load_lpips",
]
