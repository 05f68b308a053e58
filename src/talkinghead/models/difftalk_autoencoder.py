"""DiffTalk's image autoencoder E_I / D_I: a VQ-regularised autoencoder into a 3-channel latent.

The paper keeps the latent at 64 x 64 x 3 for both resolutions: downsampling f = 4 at
256 px, f = 8 at 512 px. The reference release uses the CompVis VQ-f4 first stage
(ch 128, multipliers 1-2-4, 2 res blocks, 8192 codes of dimension 3, attention only in
the middle block); the f = 8 preset adds one level (1-2-2-4, as CompVis VQ-f8) and
keeps 3 latent channels. Built on diffusers' `VQModel`, which is that architecture.

`encode` returns the latent *before* quantisation (the diffusion model works there,
as in latent diffusion with a VQ first stage); `decode` quantises, then decodes.
Images are [B, 3, H, W] in [-1, 1].
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
from torch import nn

from talkinghead.errors import SettingsError


@dataclass(frozen=True)
class DiffTalkAutoencoderConfig:
    """Sizes of the VQ autoencoder; f = 2 ** (len(block_out_channels) - 1)."""

    resolution: int = 256
    block_out_channels: tuple[int, ...] = (128, 256, 512)
    layers_per_block: int = 2
    latent_channels: int = 3
    num_embeddings: int = 8192
    norm_num_groups: int = 32
    mid_attention: bool = True  # self-attention in the middle blocks (CompVis has it)

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    @property
    def latent_size(self) -> int:
        return self.resolution // self.downsample

    def to_dict(self) -> dict:
        d = asdict(self)
        d["block_out_channels"] = list(self.block_out_channels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> DiffTalkAutoencoderConfig:
        d = dict(d)
        d["block_out_channels"] = tuple(d["block_out_channels"])
        return cls(**d)


AUTOENCODER_PRESETS: dict[str, DiffTalkAutoencoderConfig] = {
    # The paper's two first stages (64 x 64 x 3 latents).
    "f4": DiffTalkAutoencoderConfig(256, (128, 256, 512)),
    "f8": DiffTalkAutoencoderConfig(512, (128, 256, 256, 512)),
    # CPU-test sizes with the same downsampling (no attention over 64 x 64 latents).
    "tiny-f4": DiffTalkAutoencoderConfig(256, (8, 16, 16), 1, 3, 64, 4, False),
    "tiny-f8": DiffTalkAutoencoderConfig(512, (8, 8, 16, 16), 1, 3, 64, 4, False),
}


def autoencoder_preset(name: str, **overrides) -> DiffTalkAutoencoderConfig:
    if name not in AUTOENCODER_PRESETS:
        raise ValueError(
            f"unknown autoencoder preset {name!r}; expected one of {', '.join(AUTOENCODER_PRESETS)}"
        )
    return replace(AUTOENCODER_PRESETS[name], **overrides)


class DiffTalkAutoencoder(nn.Module):
    """VQ autoencoder; `vq` is a diffusers `VQModel` (its state_dict keys are diffusers')."""

    def __init__(self, config: DiffTalkAutoencoderConfig | None = None) -> None:
        super().__init__()
        try:
            from diffusers import VQModel
        except ImportError:
            raise SettingsError(
                "DiffTalk's VQ autoencoder is built from diffusers, not installed here: "
                "pip install 'talkinghead[latent]'"
            ) from None

        self.config = config or DiffTalkAutoencoderConfig()
        c = self.config
        n = len(c.block_out_channels)
        self.vq = VQModel(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * n,
            up_block_types=("UpDecoderBlock2D",) * n,
            block_out_channels=tuple(c.block_out_channels),
            layers_per_block=c.layers_per_block,
            latent_channels=c.latent_channels,
            sample_size=c.resolution,
            num_vq_embeddings=c.num_embeddings,
            norm_num_groups=c.norm_num_groups,
            vq_embed_dim=c.latent_channels,
            scaling_factor=1.0,
            mid_block_add_attention=c.mid_attention,
        )

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [-1, 1] -> unquantised latent [B, 3, H / f, W / f]."""
        return self.vq.encode(images).latents

    def quantize(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Nearest codebook entries (straight-through gradient) and the VQ loss."""
        quant, loss, _ = self.vq.quantize(latents)
        return quant, loss

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Unquantised latent -> image [B, 3, H, W] (quantised first, as the release does)."""
        return self.vq.decode(latents).sample

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reconstruction and the codebook + commitment loss, for training."""
        out = self.vq(images)
        return out.sample, out.commit_loss


__all__ = [
    "AUTOENCODER_PRESETS",
    "DiffTalkAutoencoder",
    "DiffTalkAutoencoderConfig",
    "autoencoder_preset",
]
