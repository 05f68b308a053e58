"""Our DiffTalk networks' weights written back in the CompVis layouts, for the converter's tests.

The inverse of `talkinghead.methods.difftalk.convert`, written out by hand from the
layouts (CompVis ``openaimodel.UNetModel``, taming's ``VQModel``, sstzal/DiffTalk's condition
encoders and LitEma) and not from the converter, so a round trip checks the converter
against an independent statement of the same names. `save_lightning_checkpoint` writes a
file as Lightning 1.x does, its callbacks keyed by their classes.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Mapping
from pathlib import Path

import torch

_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_UNET_TOP = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}


def unet_to_compvis(
    sd: Mapping[str, torch.Tensor], layers_per_block: int
) -> dict[str, torch.Tensor]:
    """diffusers `UNet2DConditionModel` keys -> ``openaimodel.UNetModel`` keys."""
    per = layers_per_block + 1  # res blocks + the down/upsampler of a level
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        p = key.split(".")
        top = next((t for t in _UNET_TOP if key.startswith(t + ".")), None)
        if top is not None:
            out[f"{_UNET_TOP[top]}.{key[len(top) + 1 :]}"] = value
        elif p[0] == "down_blocks" and p[2] == "downsamplers":
            out[f"input_blocks.{(int(p[1]) + 1) * per}.0.op.{p[-1]}"] = value
        elif p[0] == "down_blocks":
            slot = "0" if p[2] == "resnets" else "1"
            rest = _RESNET.get(p[4], p[4]) if slot == "0" else p[4]
            index = 1 + int(p[1]) * per + int(p[3])
            out[".".join([f"input_blocks.{index}.{slot}", rest, *p[5:]])] = value
        elif p[0] == "mid_block":
            index = {"resnets.0": 0, "attentions.0": 1, "resnets.1": 2}[f"{p[1]}.{p[2]}"]
            rest = _RESNET.get(p[3], p[3]) if p[1] == "resnets" else p[3]
            out[".".join([f"middle_block.{index}", rest, *p[4:]])] = value
        elif p[0] == "up_blocks" and p[2] == "upsamplers":
            b = int(p[1])
            slot = 2 if any(k.startswith(f"up_blocks.{b}.attentions.") for k in sd) else 1
            out[f"output_blocks.{b * per + layers_per_block}.{slot}.conv.{p[-1]}"] = value
        elif p[0] == "up_blocks":
            slot = "0" if p[2] == "resnets" else "1"
            rest = _RESNET.get(p[4], p[4]) if slot == "0" else p[4]
            index = int(p[1]) * per + int(p[3])
            out[".".join([f"output_blocks.{index}.{slot}", rest, *p[5:]])] = value
        else:
            raise KeyError(key)
    return out


_VQ_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out": "proj_out"}


def first_stage_to_compvis(sd: Mapping[str, torch.Tensor], levels: int) -> dict[str, torch.Tensor]:
    """diffusers `VQModel` keys -> taming ``VQModel`` keys (1x1 convs in the attention)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        p = key.split(".")
        part = p[0]
        if part in ("quant_conv", "post_quant_conv", "quantize") or p[1] in ("conv_in", "conv_out"):
            out[key] = value
        elif p[1] == "conv_norm_out":
            out[f"{part}.norm_out.{p[-1]}"] = value
        elif p[1] == "mid_block" and p[2] == "resnets":
            out[".".join([f"{part}.mid.block_{int(p[3]) + 1}", *p[4:]])] = value
        elif p[1] == "mid_block":  # the attention: linear layers were 1x1 convs
            name = _VQ_ATTENTION[p[4]]
            out[f"{part}.mid.attn_1.{name}.{p[-1]}"] = (
                value[..., None, None] if value.ndim == 2 else value
            )
        elif p[1] in ("down_blocks", "up_blocks"):
            level = int(p[2]) if part == "encoder" else levels - 1 - int(p[2])
            head = f"{part}.{'down' if part == 'encoder' else 'up'}.{level}"
            if p[3] in ("downsamplers", "upsamplers"):
                kind = "downsample" if part == "encoder" else "upsample"
                out[f"{head}.{kind}.conv.{p[-1]}"] = value
            else:
                name = "nin_shortcut" if p[5] == "conv_shortcut" else p[5]
                out[".".join([f"{head}.block.{p[4]}", name, *p[6:]])] = value
        else:
            raise KeyError(key)
    return out


# ours -> the release's (ldm/modules/encoders/modules.py: AudioNet, AudioAttNet, LdmNet)
_CONDITIONER = (
    ("audio.window.convs.", "cond_stage_model_for_audio.encoder_conv."),
    ("audio.window.mlp.", "cond_stage_model_for_audio.encoder_fc1."),
    ("audio.filter.score.", "cond_stage_model_for_audio_smooth.attentionConvNet."),
    ("audio.filter.mix.", "cond_stage_model_for_audio_smooth.attentionNet.0."),
    ("landmarks.mlp.", "cond_stage_model_for_ldm.encoder_fc1."),
)


def conditioner_to_compvis(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in sd.items():
        ours, theirs = next((o, t) for o, t in _CONDITIONER if key.startswith(o))
        out[theirs + key[len(ours) :]] = value
    return out


def compvis_betas() -> torch.Tensor:
    """CompVis' "linear" schedule as DiffTalk's talking.yaml sets it (float64, then float32)."""
    return (torch.linspace(0.0015**0.5, 0.0195**0.5, 1000, dtype=torch.float64) ** 2).float()


def ldm_state_dict(ae, ldm, ema=None) -> dict[str, torch.Tensor]:
    """A LatentDiffusion state dict (sstzal/DiffTalk) holding `ae` and `ldm`; `ema`: the
    UNet's EMA copy (a `DiffTalkLDM`) stored as LitEma does."""
    layers = ldm.config.unet.num_res_blocks
    levels = len(ae.config.block_out_channels)
    state: dict[str, torch.Tensor] = {}
    unet = unet_to_compvis(ldm.unet.unet.state_dict(), layers)
    state.update({f"model.diffusion_model.{k}": v.clone() for k, v in unet.items()})
    vq = first_stage_to_compvis(ae.vq.state_dict(), levels)
    state.update({f"first_stage_model.{k}": v.clone() for k, v in vq.items()})
    state.update(
        {k: v.clone() for k, v in conditioner_to_compvis(ldm.conditioner.state_dict()).items()}
    )
    if ema is not None:
        for k, v in unet_to_compvis(ema.unet.unet.state_dict(), layers).items():
            state["model_ema.diffusion_model" + k.replace(".", "")] = v.clone()
        state["model_ema.decay"] = torch.tensor(0.9999)
        state["model_ema.num_updates"] = torch.tensor(10, dtype=torch.int)
    betas = compvis_betas()
    state["betas"] = betas
    state["alphas_cumprod"] = torch.cumprod(1 - betas, 0)
    return state


def first_stage_state_dict(ae) -> dict[str, torch.Tensor]:
    """A standalone taming VQModel state dict, with a stand-in of its training loss."""
    vq = first_stage_to_compvis(ae.vq.state_dict(), len(ae.config.block_out_channels))
    state = {k: v.clone() for k, v in vq.items()}
    state["loss.discriminator.main.0.weight"] = torch.zeros(4, 3, 4, 4)
    state["loss.logvar"] = torch.zeros(())
    return state


def save_lightning_checkpoint(state: Mapping[str, torch.Tensor], path: Path) -> Path:
    """`state` in a Lightning 1.x .ckpt: its callbacks keyed by a Lightning class, pickled
    under Lightning's module name (a stand-in: the reader must not need Lightning)."""
    names = [
        "pytorch_lightning",
        "pytorch_lightning.callbacks",
        "pytorch_lightning.callbacks.model_checkpoint",
    ]
    modules = {n: types.ModuleType(n) for n in names}

    class ModelCheckpoint:
        pass

    ModelCheckpoint.__module__, ModelCheckpoint.__qualname__ = names[-1], "ModelCheckpoint"
    modules[names[-1]].ModelCheckpoint = ModelCheckpoint
    saved = {n: sys.modules.get(n) for n in names}
    sys.modules.update(modules)
    try:
        torch.save(
            {
                "epoch": 3,
                "global_step": 1000,
                "pytorch-lightning_version": "1.4.2",
                "state_dict": dict(state),
                "callbacks": {ModelCheckpoint: {"best_model_score": torch.tensor(0.1)}},
                "optimizer_states": [],
                "lr_schedulers": [],
            },
            path,
        )
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m
    return path
