"""DiffTalk's denoiser M: a latent-diffusion UNet on [z_t; z_m; z_r] with cross-attention on [a; l].

The visual condition C_v = [z_t; z_m; z_r] (noisy latent, latent of the mouth-masked
ground truth, latent of the reference frame) enters as 9 input channels; the latent
condition C_l = [a; l] (one 128-d token) is the key and value of every cross-attention
layer. Output: the predicted noise, 3 channels.

Default sizes are the reference release's (CompVis `openaimodel.UNetModel` as configured
in sstzal/DiffTalk's talking.yaml): base 256 channels, multipliers 1-2-3-4, 2 res blocks
per level, spatial transformers of depth 1 with 32-channel heads at downsampling
factors 8, 4 and 2 (every level but the first) and in the middle block, context 128.
diffusers' `UNet2DConditionModel` is the same architecture (Stable Diffusion 1.x is this
UNet with other sizes), so it is built from that; its state_dict keys are diffusers'.

`DiffTalkLDM` bundles the denoiser with the condition encoders that are trained with it
(E_A and E_L, paper Eq. 3): one module, one checkpoint.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import torch
from torch import nn

from talkinghead.errors import SettingsError
from talkinghead.models.difftalk_conditions import DiffTalkConditionConfig, DiffTalkConditioner


@dataclass(frozen=True)
class DiffTalkUNetConfig:
    """UNet sizes; `attention_resolutions` are downsampling factors (1 = the first level)."""

    sample_size: int = 64
    latent_channels: int = 3  # per latent; the input has 3 of them
    base_channels: int = 256
    channel_mult: tuple[int, ...] = (1, 2, 3, 4)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (8, 4, 2)
    head_channels: int = 32
    transformer_depth: int = 1
    context_dim: int = 128
    norm_num_groups: int = 32

    @property
    def block_channels(self) -> tuple[int, ...]:
        return tuple(self.base_channels * m for m in self.channel_mult)

    def attends(self, level: int) -> bool:
        return 2**level in self.attention_resolutions

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channel_mult"] = list(self.channel_mult)
        d["attention_resolutions"] = list(self.attention_resolutions)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> DiffTalkUNetConfig:
        d = dict(d)
        d["channel_mult"] = tuple(d["channel_mult"])
        d["attention_resolutions"] = tuple(d["attention_resolutions"])
        return cls(**d)


UNET_PRESETS: dict[str, DiffTalkUNetConfig] = {
    "release": DiffTalkUNetConfig(),
    # CPU-test size: three levels, attention on the last (factor 4) and in the middle.
    "tiny": DiffTalkUNetConfig(
        base_channels=16,
        channel_mult=(1, 2, 2),
        num_res_blocks=1,
        attention_resolutions=(4,),
        head_channels=8,
        norm_num_groups=8,
    ),
}


def unet_preset(name: str, **overrides) -> DiffTalkUNetConfig:
    if name not in UNET_PRESETS:
        raise ValueError(f"unknown UNet preset {name!r}; expected one of {', '.join(UNET_PRESETS)}")
    return replace(UNET_PRESETS[name], **overrides)


class DiffTalkUNet(nn.Module):
    """eps = M([z_t; z_m; z_r], t, C_l)."""

    def __init__(self, config: DiffTalkUNetConfig | None = None) -> None:
        super().__init__()
        try:
            from diffusers import UNet2DConditionModel
        except ImportError:
            raise SettingsError(
                "DiffTalk's UNet is built from diffusers, not installed here: "
                "pip install 'talkinghead[latent]'"
            ) from None

        self.config = config or DiffTalkUNetConfig()
        c = self.config
        levels = range(len(c.channel_mult))
        if any(ch % c.head_channels for ch in c.block_channels):
            raise ValueError(f"every level's channels must be a multiple of {c.head_channels}")
        down = tuple("CrossAttnDownBlock2D" if c.attends(i) else "DownBlock2D" for i in levels)
        up = tuple("CrossAttnUpBlock2D" if c.attends(i) else "UpBlock2D" for i in reversed(levels))
        self.unet = UNet2DConditionModel(
            sample_size=c.sample_size,
            in_channels=3 * c.latent_channels,
            out_channels=c.latent_channels,
            down_block_types=down,
            up_block_types=up,
            block_out_channels=c.block_channels,
            layers_per_block=c.num_res_blocks,
            cross_attention_dim=c.context_dim,
            transformer_layers_per_block=c.transformer_depth,
            # diffusers reads this as the number of heads per level (a known misnomer).
            attention_head_dim=tuple(ch // c.head_channels for ch in c.block_channels),
            norm_num_groups=c.norm_num_groups,
            flip_sin_to_cos=True,
            freq_shift=0,
        )

    def forward(
        self,
        noisy: torch.Tensor,
        masked: torch.Tensor,
        reference: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor,
    ) -> torch.Tensor:
        x = torch.cat([noisy, masked, reference], dim=1)
        return self.unet(x, timesteps, encoder_hidden_states=context).sample


@dataclass(frozen=True)
class DiffTalkLDMConfig:
    unet: DiffTalkUNetConfig = field(default_factory=DiffTalkUNetConfig)
    conditions: DiffTalkConditionConfig = field(default_factory=DiffTalkConditionConfig)

    def to_dict(self) -> dict:
        return {"unet": self.unet.to_dict(), "conditions": self.conditions.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> DiffTalkLDMConfig:
        return cls(
            unet=DiffTalkUNetConfig.from_dict(d["unet"]),
            conditions=DiffTalkConditionConfig(**d["conditions"]),
        )


class DiffTalkLDM(nn.Module):
    """The trainable part of DiffTalk: the denoiser and the audio/landmark encoders."""

    def __init__(self, config: DiffTalkLDMConfig | None = None) -> None:
        super().__init__()
        self.config = config or DiffTalkLDMConfig()
        if self.config.unet.context_dim != self.config.conditions.context_dim:
            raise ValueError(
                f"the UNet's context_dim ({self.config.unet.context_dim}) must equal "
                f"D_A + D_L ({self.config.conditions.context_dim})"
            )
        self.unet = DiffTalkUNet(self.config.unet)
        self.conditioner = DiffTalkConditioner(self.config.conditions)

    def context(self, audio: torch.Tensor, landmarks: torch.Tensor) -> torch.Tensor:
        return self.conditioner(audio, landmarks)

    def forward(
        self,
        noisy: torch.Tensor,
        timesteps: torch.Tensor,
        masked: torch.Tensor,
        reference: torch.Tensor,
        context: torch.Tensor,
    ) -> torch.Tensor:
        return self.unet(noisy, masked, reference, timesteps, context)


__all__ = [
    "UNET_PRESETS",
    "DiffTalkLDM",
    "DiffTalkLDMConfig",
    "DiffTalkUNet",
    "DiffTalkUNetConfig",
    "unet_preset",
]
