"""CompVis-layout checkpoints into DiffTalk's layout (`talkinghead convert-difftalk`).

Two layouts are read, both Lightning ``.ckpt`` files with the weights under ``state_dict``:

- **latent diffusion** as sstzal/DiffTalk trains it (CompVis ``ldm``): ``model.diffusion_model.*``
  (the UNet, ``openaimodel.UNetModel``), ``model_ema.*`` (its EMA under LitEma's flattened
  names), ``first_stage_model.*`` (taming's ``VQModel``), the release's condition encoders
  ``cond_stage_model_for_audio.*`` (AudioNet: E_A's per-window encoder),
  ``cond_stage_model_for_audio_smooth.*`` (AudioAttNet: the temporal filter) and
  ``cond_stage_model_for_ldm.*`` (LdmNet: E_L), and the noise schedule's buffers;
- a **VQ first stage** alone (taming's ``VQModel``, e.g. CompVis vq-f4): ``encoder.*``,
  ``decoder.*``, ``quantize.embedding.weight``, ``quant_conv.*``, ``post_quant_conv.*``
  (``loss.*``, the training loss's discriminator and LPIPS, is left out). Self-attention
  inside a level (taming's ``attn_resolutions``, as in vq-f8) has no counterpart in ours.

The UNet and the first stage are diffusers' models, so diffusers' own converters
(`convert_ldm_unet_checkpoint`, `convert_ldm_vae_checkpoint`) map them; the codebook and the
condition encoders, which diffusers does not know, are mapped here. The sizes are read from
the checkpoint's shapes (what the weights cannot say: 32 normalisation groups and 32-channel
attention heads, CompVis' and the release's) or checked against an expected configuration.
Where our network cannot hold a release tensor (the release's 8-frame temporal filter, its
39 dlib landmarks) that layer is initialised instead, and the report says so.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from talkinghead.errors import CheckpointError, SettingsError
from talkinghead.methods.difftalk.checkpoint import (
    AUTOENCODER_FILE,
    CHECKPOINT_FORMAT,
    LDM_FILE,
    MANIFEST_NAME,
    save_component,
    write_manifest,
)
from talkinghead.methods.difftalk.features import (
    CROP_SCALE,
    CROP_SMOOTHING,
    CROP_VY,
    LANDMARK_POINTS,
)
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
from talkinghead.models.loading import load_failure

UNET_PREFIX = "model.diffusion_model."
EMA_PREFIX = "model_ema."
FIRST_STAGE_PREFIX = "first_stage_model."
AUDIO_PREFIX = "cond_stage_model_for_audio."
SMOOTH_PREFIX = "cond_stage_model_for_audio_smooth."
LANDMARK_PREFIX = "cond_stage_model_for_ldm."
_FIRST_STAGE_PARTS = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.", "quantize.")
_CODEBOOK = "quantize.embedding.weight"
# The release's condition encoders (ldm/modules/encoders/modules.py) are ours layer for
# layer; diffusers has no converter for them, so the prefixes are mapped here.
_CONDITIONER_KEYS = (
    (AUDIO_PREFIX + "encoder_conv.", "conditioner.audio.window.convs."),
    (AUDIO_PREFIX + "encoder_fc1.", "conditioner.audio.window.mlp."),
    (SMOOTH_PREFIX + "attentionConvNet.", "conditioner.audio.filter.score."),
    (SMOOTH_PREFIX + "attentionNet.0.", "conditioner.audio.filter.mix."),  # Linear, Softmax
    (LANDMARK_PREFIX + "encoder_fc1.", "conditioner.landmarks.mlp."),
)
# LatentDiffusion's buffers that are not weights: the schedule (checked), the latent scale.
_SCHEDULE_BUFFERS = {
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod", "posterior_variance",
    "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
    "logvar", "scale_factor", "cond_ids",
}  # fmt: skip
COMPVIS_NORM_GROUPS = 32  # CompVis' GroupNorm32 and taming's Normalize
RELEASE_HEAD_CHANNELS = 32  # talking.yaml's num_head_channels
_WAV2VEC2_FEATURES = DiffTalkConditionConfig().audio_feature_dim  # the default CTC model's


@dataclass
class ConversionReport:
    """What `convert_compvis_checkpoint` wrote and what it could not take from the file."""

    kind: str  # "ldm" (latent diffusion: both networks) or "first_stage" (the autoencoder)
    directory: Path
    files: list[Path]
    ema: bool = False  # the UNet's weights are its EMA's
    initialised: list[str] = field(default_factory=list)  # our parameters not from the file
    notes: list[str] = field(default_factory=list)  # what did not map, and what to do
    ignored: dict[str, int] = field(default_factory=dict)  # key groups left out -> tensors


# ---------------------------------------------------------------------------- reading


class _Placeholder:
    """Stands for a class a Lightning checkpoint pickles besides its weights (callbacks,
    hyper-parameters): built from nothing, it runs none of their code."""

    def __new__(cls, *args: Any, **kwargs: Any) -> _Placeholder:
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


def _placeholders(path: Path) -> list[type]:
    # Lightning keys its callbacks' states by their classes, which the weights-only
    # unpickler refuses: each such name is let through as an inert placeholder.
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not a zip-format file: the plain load below says what is wrong
        return []
    out = []
    for name in names:
        module, _, qualname = name.rpartition(".")
        out.append(
            type(qualname, (_Placeholder,), {"__module__": module, "__qualname__": qualname})
        )
    return out


def read_compvis_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The weights of a CompVis-layout checkpoint, read with the weights-only unpickler."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        with torch.serialization.safe_globals(_placeholders(path)):
            # Memory-mapped (zip-format files): a 4.5 GB release file needs 2 GB less.
            obj = torch.load(
                path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path)
            )
    except Exception as e:  # torch raises many types for a damaged or foreign file
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint: {load_failure(path, e)}"
        ) from None
    if isinstance(obj, Mapping) and obj.get("format") == CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: already a talkinghead DiffTalk checkpoint; use it as it is")
    state = obj.get("state_dict", obj) if isinstance(obj, Mapping) else obj
    if not isinstance(state, Mapping) or not state:
        raise CheckpointError(f"{path}: holds no state_dict (not a CompVis checkpoint)")
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(
            f"{path}: its state_dict holds non-tensors ({bad[0]!r}); not a CompVis checkpoint"
        )
    return {str(k): v for k, v in state.items()}


def checkpoint_kind(state: Mapping[str, torch.Tensor], path: Path) -> str:
    """The layout, "ldm" or "first_stage", from the keys; a one-line error for any other."""
    if any(k.startswith(UNET_PREFIX) for k in state):
        return "ldm"
    if "encoder.conv_in.weight" in state and "decoder.conv_in.weight" in state:
        return "first_stage"
    shown = ", ".join(list(state)[:4])
    raise CheckpointError(
        f"{path}: not a CompVis latent-diffusion or VQ checkpoint: no {UNET_PREFIX}* or "
        f"encoder.*/decoder.* weights (found {shown}, ...)"
    )


def _require(state: Mapping[str, torch.Tensor], key: str, what: str, path: Path) -> torch.Tensor:
    if key not in state:
        raise CheckpointError(f"{path}: no {key}: not {what}")
    return state[key]


def _groups(keys: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for k in keys:
        head = k.split(".")[0] + (".*" if "." in k else "")
        out[head] = out.get(head, 0) + 1
    return out


# ---------------------------------------------------------------------------- sizes


def first_stage_config(
    state: Mapping[str, torch.Tensor],
    path: Path,
    *,
    resolution: int | None = None,
    norm_num_groups: int = COMPVIS_NORM_GROUPS,
) -> DiffTalkAutoencoderConfig:
    """Our autoencoder's config for a taming VQModel state dict (keys without a prefix)."""
    what = "a taming VQ first stage"
    _require(state, "encoder.conv_in.weight", what, path)
    levels = sorted({int(k.split(".")[2]) for k in state if k.startswith("encoder.down.")})
    blocks = {int(k.split(".")[4]) for k in state if k.startswith("encoder.down.0.block.")}
    if not levels or not blocks:
        raise CheckpointError(f"{path}: no encoder.down.0.block.* weights: not {what}")
    widths = tuple(
        int(_require(state, f"encoder.down.{i}.block.0.conv2.weight", what, path).shape[0])
        for i in range(len(levels))
    )
    codebook = _require(state, _CODEBOOK, what, path)
    z = _require(state, "encoder.conv_out.weight", what, path).shape[0]
    if z != codebook.shape[1]:
        raise CheckpointError(
            f"{path}: encoder.conv_out.weight gives {z} latent channels, the codebook "
            f"({_CODEBOOK}) {codebook.shape[1]}; our autoencoder needs them equal"
        )
    f = 2 ** (len(widths) - 1)
    return DiffTalkAutoencoderConfig(
        resolution=int(resolution or 64 * f),  # the paper's 64 x 64 latents
        block_out_channels=widths,
        layers_per_block=len(blocks),
        latent_channels=int(codebook.shape[1]),
        num_embeddings=int(codebook.shape[0]),
        norm_num_groups=norm_num_groups,
        mid_attention="encoder.mid.attn_1.q.weight" in state,
    )


def unet_config(
    state: Mapping[str, torch.Tensor],
    path: Path,
    *,
    head_channels: int = RELEASE_HEAD_CHANNELS,
    norm_num_groups: int = COMPVIS_NORM_GROUPS,
    sample_size: int = 64,
) -> DiffTalkUNetConfig:
    """Our UNet's config for an ``openaimodel.UNetModel`` state dict (keys without a prefix)."""
    what = "a CompVis UNetModel"
    conv_in = _require(state, "input_blocks.0.0.weight", what, path)
    out = _require(state, "out.2.weight", what, path)
    base = int(conv_in.shape[0])
    n_in = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("input_blocks."))
    downs = sorted(
        int(k.split(".")[1]) for k in state if k.startswith("input_blocks.") and ".0.op." in k
    )
    per_level = downs[0] if downs else n_in  # res blocks + 1 (the downsampler) per level
    levels = n_in // per_level
    first = [1 + b * per_level for b in range(levels)]
    mult = []
    for i in first:
        width = int(_require(state, f"input_blocks.{i}.0.out_layers.3.weight", what, path).shape[0])
        if width % base:
            raise CheckpointError(
                f"{path}: input_blocks.{i}.0 has {width} channels, not a multiple of {base}"
            )
        mult.append(width // base)
    attends = tuple(
        sorted(
            (2**b for b, i in enumerate(first) if f"input_blocks.{i}.1.proj_in.weight" in state),
            reverse=True,
        )
    )
    blocks = [k.split("transformer_blocks.")[1] for k in state if "transformer_blocks." in k]
    depth = 1 + max((int(b.split(".")[0]) for b in blocks), default=0)
    context = next((state[k].shape[1] for k in state if k.endswith("attn2.to_k.weight")), 128)
    return DiffTalkUNetConfig(
        sample_size=sample_size,
        latent_channels=int(out.shape[0]),
        base_channels=base,
        channel_mult=tuple(mult),
        num_res_blocks=per_level - 1,
        attention_resolutions=attends,
        head_channels=head_channels,
        transformer_depth=depth,
        context_dim=int(context),
        norm_num_groups=norm_num_groups,
    )


def condition_config(
    state: Mapping[str, torch.Tensor], path: Path
) -> tuple[DiffTalkConditionConfig, set[str], list[str]]:
    """Our condition encoders' config for the release's, the release keys that cannot go
    into it, and why (one note each)."""
    prefixes = (AUDIO_PREFIX, SMOOTH_PREFIX, LANDMARK_PREFIX)
    present = [p for p in prefixes if any(k.startswith(p) for k in state)]
    default = DiffTalkConditionConfig(num_landmarks=len(LANDMARK_POINTS))
    if len(present) < len(prefixes):
        absent = ", ".join(p + "*" for p in prefixes if p not in present)
        return default, set(), [
            f"no {absent} in the checkpoint: the condition encoders E_A and E_L are "
            "initialised and must be trained before use"
        ]  # fmt: skip
    what = "the release's condition encoders"

    def shape(key: str) -> torch.Size:
        return _require(state, key, what, path).shape

    convs = sorted(
        {int(k.split(".")[2]) for k in state if k.startswith(AUDIO_PREFIX + "encoder_conv.")}
    )
    frames = shape(SMOOTH_PREFIX + "attentionNet.0.weight")[0]
    landmarks = shape(LANDMARK_PREFIX + "encoder_fc1.0.weight")
    skipped: set[str] = set()
    notes: list[str] = []
    radius = (frames - 1) // 2
    if frames % 2 == 0:
        radius = default.smooth_radius
        skipped |= {k for k in state if k.startswith(SMOOTH_PREFIX + "attentionNet.")}
        notes.append(
            f"the checkpoint's temporal filter weighs {frames} frames "
            f"({SMOOTH_PREFIX}attentionNet.0); ours weighs 2w + 1 = {2 * radius + 1} frames "
            "centred on the current one: that layer is initialised, train it before use"
        )
    num_landmarks = landmarks[1] // 2
    if num_landmarks != len(LANDMARK_POINTS):
        skipped |= {k for k in state if k.startswith(LANDMARK_PREFIX + "encoder_fc1.0.")}
        notes.append(
            f"E_L's first layer ({LANDMARK_PREFIX}encoder_fc1.0) reads {num_landmarks} "
            f"landmarks (the release: 39 dlib points); ours reads {len(LANDMARK_POINTS)} "
            "MediaPipe mesh points: that layer is initialised, train it before use"
        )
        num_landmarks = len(LANDMARK_POINTS)
    config = DiffTalkConditionConfig(
        audio_feature_dim=int(shape(AUDIO_PREFIX + "encoder_conv.0.weight")[1]),
        audio_window=2 ** len(convs),
        audio_dim=int(shape(AUDIO_PREFIX + "encoder_fc1.2.weight")[0]),
        smooth_radius=int(radius),
        score_channels=int(shape(SMOOTH_PREFIX + "attentionConvNet.0.weight")[1]),
        num_landmarks=int(num_landmarks),
        landmark_hidden=int(landmarks[0]),
        landmark_dim=int(shape(LANDMARK_PREFIX + "encoder_fc1.4.weight")[0]),
    )
    return config, skipped, notes


# ---------------------------------------------------------------------------- key maps


def convert_first_stage(
    state: Mapping[str, torch.Tensor], config: DiffTalkAutoencoderConfig
) -> dict[str, torch.Tensor]:
    """taming VQModel keys (no prefix) -> `DiffTalkAutoencoder` keys."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    n = len(config.block_out_channels)
    layout = {
        "down_block_types": ["DownEncoderBlock2D"] * n,
        "up_block_types": ["UpDecoderBlock2D"] * n,
    }
    parts = {k: v for k, v in state.items() if k.startswith(_FIRST_STAGE_PARTS) and k != _CODEBOOK}
    out = convert_ldm_vae_checkpoint(parts, layout)
    if _CODEBOOK in state:  # diffusers' converter is for the KL autoencoder: no codebook
        out[_CODEBOOK] = state[_CODEBOOK]
    return {f"vq.{k}": v for k, v in out.items() if v is not None}


def convert_unet(
    state: Mapping[str, torch.Tensor], config: DiffTalkUNetConfig
) -> dict[str, torch.Tensor]:
    """``openaimodel.UNetModel`` keys (no prefix) -> `DiffTalkLDM`'s UNet keys."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    prefixed = {UNET_PREFIX + k: v for k, v in state.items()}
    out = convert_ldm_unet_checkpoint(prefixed, {"layers_per_block": config.num_res_blocks})
    return {f"unet.unet.{k}": v for k, v in out.items() if v is not None}


def convert_conditioner(
    state: Mapping[str, torch.Tensor], skip: Collection[str] = ()
) -> dict[str, torch.Tensor]:
    """The release's condition encoders -> `DiffTalkLDM`'s conditioner keys."""
    out = {}
    for key, value in state.items():
        if key in skip:
            continue
        for theirs, ours in _CONDITIONER_KEYS:
            if key.startswith(theirs):
                out[ours + key[len(theirs) :]] = value
                break
    return out


def ema_unet(state: Mapping[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """The UNet's weights (no prefix) from LitEma's copies, ``model_ema.diffusion_model<flat>``."""
    # Done here, not by diffusers' extract_ema: that one silently takes the raw weights
    # when fewer than 100 EMA tensors exist (every small model).
    out = {}
    for key in state:
        if not key.startswith(UNET_PREFIX):
            continue
        flat = EMA_PREFIX + "".join(key.split(".")[1:])
        if flat not in state:
            raise CheckpointError(
                f"{path}: {key} has no EMA copy ({flat}); convert with --no-ema for the raw weights"
            )
        out[key[len(UNET_PREFIX) :]] = state[flat]
    return out


# ---------------------------------------------------------------------------- checks


def _origin(state: Mapping[str, torch.Tensor]) -> dict[tuple[int, int], str]:
    # The converters move tensors (or slice views of them) without copying, so a converted
    # tensor's storage names the checkpoint key it came from, for the error messages.
    return {(v.untyped_storage().data_ptr(), v.storage_offset()): k for k, v in state.items()}


def _source(
    origin: Mapping[tuple[int, int], str], value: torch.Tensor, prefix: str, ours: str
) -> str:
    theirs = origin.get((value.untyped_storage().data_ptr(), value.storage_offset()))
    return prefix + theirs if theirs is not None else f"the weight converted to {ours}"


def _describe_autoencoder(c: DiffTalkAutoencoderConfig, name: str | None) -> str:
    sizes = (
        f"channels {'-'.join(map(str, c.block_out_channels))}, {c.layers_per_block} res blocks, "
        f"{c.num_embeddings} codes of dimension {c.latent_channels}"
    )
    return f"the {name} autoencoder ({sizes})" if name else f"an autoencoder with {sizes}"


def _describe_unet(c: DiffTalkUNetConfig, name: str | None) -> str:
    attention = ", ".join(map(str, c.attention_resolutions)) or "none"
    sizes = (
        f"channels {c.base_channels} x {'-'.join(map(str, c.channel_mult))}, "
        f"{c.num_res_blocks} res blocks, attention at factors {attention}, "
        f"context {c.context_dim}"
    )
    return f"the {name} UNet ({sizes})" if name else f"a UNet with {sizes}"


def _fit(
    module: nn.Module,
    converted: Mapping[str, torch.Tensor],
    origin: Mapping[tuple[int, int], str],
    prefix: str,
    what: str,
    path: Path,
    may_miss: Collection[str] = (),
) -> None:
    """Load `converted` into `module`, or a one-line error naming the checkpoint's key."""
    expected = module.state_dict()
    for key, value in converted.items():
        if key not in expected:
            theirs = _source(origin, value, prefix, key)
            hint = ""
            if ".attn." in theirs and (".down." in theirs or ".up." in theirs):
                hint = " (self-attention inside a level; ours has it only in the middle block)"
            raise CheckpointError(f"{path}: {theirs} has no counterpart in {what}{hint}")
        if tuple(value.shape) != tuple(expected[key].shape):
            theirs = _source(origin, value, prefix, key)
            raise CheckpointError(
                f"{path}: {theirs} has shape {tuple(value.shape)}; {what} expects "
                f"{tuple(expected[key].shape)}"
            )
    missing = [k for k in expected if k not in converted and k not in may_miss]
    if missing:
        more = f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(
            f"{path}: no weights for {missing[0]}{more} of {what}: the checkpoint's network "
            "is laid out otherwise"
        )
    module.load_state_dict(dict(converted), strict=False)


def _check_schedule(state: Mapping[str, torch.Tensor], path: Path) -> None:
    from talkinghead.diffusion.latent_inpainting import BETA_END, BETA_START, difftalk_schedule

    if "betas" in state:
        theirs = state["betas"].double()
        ours = difftalk_schedule().betas.double()
        if theirs.shape != ours.shape or not torch.allclose(theirs, ours, rtol=1e-4, atol=1e-7):
            raise CheckpointError(
                f"{path}: betas: the checkpoint's noise schedule ({theirs.numel()} steps, beta "
                f"{theirs[0].item():.4g} -> {theirs[-1].item():.4g}) is not DiffTalk's "
                f"(1000 steps, {BETA_START} -> {BETA_END}); our sampler would not fit it"
            )
    if "scale_factor" in state and abs(float(state["scale_factor"]) - 1.0) > 1e-6:
        raise CheckpointError(
            f"{path}: scale_factor {float(state['scale_factor']):.6g}: the checkpoint scales "
            "its latents; DiffTalk's pipeline uses the first stage's latents unscaled (1)"
        )


def _check_unet_against(
    unet: DiffTalkUNetConfig,
    ae: DiffTalkAutoencoderConfig,
    cond: DiffTalkConditionConfig,
    state: Mapping[str, torch.Tensor],
    path: Path,
) -> None:
    """The UNet's input, output and context widths against the other networks'."""
    latent = ae.latent_channels
    conv_in = _require(state, "input_blocks.0.0.weight", "a CompVis UNetModel", path)
    conv_out = _require(state, "out.2.weight", "a CompVis UNetModel", path)
    if conv_in.shape[1] != 3 * latent:
        raise CheckpointError(
            f"{path}: {UNET_PREFIX}input_blocks.0.0.weight takes {conv_in.shape[1]} channels; "
            f"DiffTalk's UNet takes [z_t; z_m; z_r] = 3 x {latent} = {3 * latent}"
        )
    if conv_out.shape[0] != latent:
        raise CheckpointError(
            f"{path}: {UNET_PREFIX}out.2.weight predicts {conv_out.shape[0]} "
            f"channels; the first stage's latent has {latent}"
        )
    to_k = next((k for k in state if k.endswith("attn2.to_k.weight")), None)
    if to_k is not None and state[to_k].shape[1] != cond.context_dim:
        raise CheckpointError(
            f"{path}: {UNET_PREFIX}{to_k} attends to a {state[to_k].shape[1]}-wide context; "
            f"the condition encoders give {cond.audio_dim} + {cond.landmark_dim} = {cond.context_dim}"
        )
    if unet.context_dim != cond.context_dim:
        raise CheckpointError(
            f"{path}: the expected UNet's context is {unet.context_dim} wide; the condition "
            f"encoders give {cond.context_dim}"
        )


# ---------------------------------------------------------------------------- conversion


def _named(spec: Any, presets: Any) -> tuple[Any, str | None]:
    """(config, preset name) of an expected configuration given as either; checked first."""
    if not isinstance(spec, str):
        return spec, None
    try:
        return presets(spec), spec
    except ValueError as e:
        raise SettingsError(str(e)) from None


def _expected_autoencoder(
    expected: DiffTalkAutoencoderConfig | None,
    state: Mapping[str, torch.Tensor],
    path: Path,
    resolution: int | None,
) -> DiffTalkAutoencoderConfig:
    if expected is None:
        return first_stage_config(state, path, resolution=resolution)
    return replace(expected, resolution=int(resolution)) if resolution else expected


def _expected_unet(
    expected: DiffTalkUNetConfig | None,
    state: Mapping[str, torch.Tensor],
    path: Path,
    head_channels: int | None,
    sample_size: int,
) -> DiffTalkUNetConfig:
    if expected is None:
        heads = head_channels or RELEASE_HEAD_CHANNELS
        return unet_config(state, path, head_channels=heads, sample_size=sample_size)
    config = replace(expected, sample_size=sample_size)
    return replace(config, head_channels=int(head_channels)) if head_channels else config


def _build(factory: Any, config: Any, what: str, path: Path, inferred: bool) -> nn.Module:
    # Parameters the file does not give start from a fixed seed, without touching the caller's RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        try:
            return factory(config)
        except ValueError as e:
            hint = ""
            if inferred:
                option = "--autoencoder-preset" if "autoencoder" in what else "--unet-preset"
                hint = (
                    f" with the sizes read from the checkpoint and CompVis' {COMPVIS_NORM_GROUPS} "
                    f"normalisation groups / {RELEASE_HEAD_CHANNELS}-channel heads; name its "
                    f"configuration ({option}, --head-channels)"
                )
            raise CheckpointError(f"{path}: cannot build {what} ({e}){hint}") from None


def convert_compvis_checkpoint(
    checkpoint: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    autoencoder: DiffTalkAutoencoderConfig | str | None = None,
    unet: DiffTalkUNetConfig | str | None = None,
    head_channels: int | None = None,
    resolution: int | None = None,
    ema: bool = True,
    audio_model: str | None = None,
    overwrite: bool = False,
) -> ConversionReport:
    """Write a CompVis-layout checkpoint (see the module docstring) in DiffTalk's layout.

    A latent-diffusion checkpoint gives ``autoencoder.pt``, ``ldm.pt`` and ``difftalk.json``
    (a directory for ``generate --method difftalk``); a VQ first stage gives
    ``autoencoder.pt`` (for ``train-difftalk --stage ldm``). ``autoencoder`` / ``unet``: the
    configuration (or preset name) the weights must fit, else the sizes are read from the
    checkpoint; ``head_channels``: channels per attention head (not stored in the weights;
    default 32, the release's); ``resolution``: the image size (default 64 x the first
    stage's downsampling); ``ema``: the UNet's EMA weights when the file has them;
    ``audio_model``: the CTC model recorded for generation. Files already in ``out_dir``
    are replaced only with ``overwrite``. The report's ``notes`` say what did not map.
    """
    from talkinghead.validation import check_not_an_input

    path, out = Path(checkpoint), Path(out_dir)
    if out.exists() and not out.is_dir():
        raise SettingsError(f"{out}: OUT_DIR is a file; choose a folder")
    if resolution is not None and resolution < 1:
        raise SettingsError(f"--resolution must be positive, not {resolution}")
    if head_channels is not None and head_channels < 1:
        raise SettingsError(f"--head-channels must be >= 1, not {head_channels}")
    expected_ae, ae_name = _named(autoencoder, autoencoder_preset)
    expected_unet, unet_name = _named(unet, unet_preset)
    for name in (AUTOENCODER_FILE, LDM_FILE, MANIFEST_NAME):
        check_not_an_input(out / name, {"CHECKPOINT": path}, output_is_folder=False)
    state = read_compvis_state_dict(path)
    kind = checkpoint_kind(state, path)
    names = [AUTOENCODER_FILE] + ([LDM_FILE, MANIFEST_NAME] if kind == "ldm" else [])
    present = [n for n in names if (out / n).exists()]
    if present and not overwrite:
        raise SettingsError(
            f"{out / present[0]} exists: pass --overwrite to replace it, or choose another OUT_DIR"
        )
    report = ConversionReport(kind, out, [])
    ae, ae_config, used = _convert_autoencoder(state, kind, path, expected_ae, ae_name, resolution)
    ldm = None
    if kind == "ldm":
        ldm, used_ldm = _convert_ldm(
            state, path, ae_config, expected_unet, unet_name, head_channels, ema, report
        )
        used |= used_ldm
        if ldm.config.conditions.audio_feature_dim != _WAV2VEC2_FEATURES and not audio_model:
            report.notes.append(
                f"E_A reads {ldm.config.conditions.audio_feature_dim} audio features per "
                "20 ms step (the release: DeepSpeech's 29 characters); generation needs an "
                "audio model giving as many (--audio-model, or audio_encoder= from Python)"
            )
    report.ignored = _groups(sorted(set(state) - used))

    # The manifest goes last: a directory that has one is complete.
    extra = {"converted_from": str(path)}
    report.files.append(
        save_component(out / AUTOENCODER_FILE, "autoencoder", ae, ae_config.to_dict(), **extra)
    )
    if ldm is not None:
        report.files.append(
            save_component(
                out / LDM_FILE, "ldm", ldm, ldm.config.to_dict(), ema=report.ema,
                initialised=report.initialised, **extra,
            )
        )  # fmt: skip
        data = _manifest_data(ldm.config.conditions, audio_model)
        report.files.append(write_manifest(out, ae_config.resolution, data))
    return report


def _convert_autoencoder(
    state: Mapping[str, torch.Tensor],
    kind: str,
    path: Path,
    expected: DiffTalkAutoencoderConfig | None,
    name: str | None,
    resolution: int | None,
) -> tuple[DiffTalkAutoencoder, DiffTalkAutoencoderConfig, set[str]]:
    prefix = FIRST_STAGE_PREFIX if kind == "ldm" else ""
    first = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    first = {k: v for k, v in first.items() if k.startswith(_FIRST_STAGE_PARTS)}
    if not first:
        raise CheckpointError(
            f"{path}: no {FIRST_STAGE_PREFIX}* weights: an LDM checkpoint needs its first stage"
        )
    config = _expected_autoencoder(expected, first, path, resolution)
    ae = _build(DiffTalkAutoencoder, config, "the autoencoder", path, expected is None)
    what = _describe_autoencoder(config, name)
    _fit(ae, convert_first_stage(first, config), _origin(first), prefix, what, path)
    return ae, config, {prefix + k for k in first}


def _convert_ldm(
    state: Mapping[str, torch.Tensor],
    path: Path,
    ae_config: DiffTalkAutoencoderConfig,
    expected: DiffTalkUNetConfig | None,
    name: str | None,
    head_channels: int | None,
    ema: bool,
    report: ConversionReport,
) -> tuple[DiffTalkLDM, set[str]]:
    _check_schedule(state, path)
    raw = {k[len(UNET_PREFIX) :]: v for k, v in state.items() if k.startswith(UNET_PREFIX)}
    report.ema = ema and any(k.startswith(EMA_PREFIX + "diffusion_model") for k in state)
    weights = ema_unet(state, path) if report.ema else raw
    cond_config, skipped, notes = condition_config(state, path)
    report.notes += notes
    unet_cfg = _expected_unet(expected, raw, path, head_channels, ae_config.latent_size)
    _check_unet_against(unet_cfg, ae_config, cond_config, raw, path)
    ldm_config = DiffTalkLDMConfig(unet=unet_cfg, conditions=cond_config)
    ldm = _build(DiffTalkLDM, ldm_config, "the UNet", path, expected is None)
    unet_keys = {k.removeprefix("unet."): v for k, v in convert_unet(weights, unet_cfg).items()}
    what = _describe_unet(unet_cfg, name)
    _fit(ldm.unet, unet_keys, _origin(weights), UNET_PREFIX, what, path)

    conditioner = {
        k.removeprefix("conditioner."): v for k, v in convert_conditioner(state, skipped).items()
    }
    fresh = set(ldm.conditioner.state_dict()) - set(conditioner)
    if not skipped and conditioner:
        fresh = set()  # all of the release's encoders are there: every tensor must map
    _fit(ldm.conditioner, conditioner, _origin(state), "", "the condition encoders", path, fresh)
    report.initialised = sorted(f"conditioner.{k}" for k in fresh)
    used = {k for k in state if k.startswith((UNET_PREFIX, EMA_PREFIX))}
    used |= {k for k in state if k.startswith((AUDIO_PREFIX, SMOOTH_PREFIX, LANDMARK_PREFIX))}
    return ldm, used | (_SCHEDULE_BUFFERS & set(state))


def _manifest_data(cond: DiffTalkConditionConfig, audio_model: str | None) -> dict[str, Any]:
    """difftalk.json's data settings: the crop defaults, the audio features, the filter."""
    audio: dict[str, Any] = {
        "feature_dim": cond.audio_feature_dim,
        "window": cond.audio_window,
        "rate": 50.0,  # 20 ms steps
    }
    if audio_model is None and cond.audio_feature_dim == _WAV2VEC2_FEATURES:
        from talkinghead.audio.ctc import DEFAULT_CTC_MODEL

        audio_model = DEFAULT_CTC_MODEL
    if audio_model is not None:
        audio["encoder"] = str(audio_model)
    return {
        "crop": {"scale": CROP_SCALE, "vy": CROP_VY, "smoothing": CROP_SMOOTHING},
        "audio": audio,
        "smooth_radius": cond.smooth_radius,
    }


__all__ = [
    "ConversionReport",
    "checkpoint_kind",
    "condition_config",
    "convert_compvis_checkpoint",
    "convert_conditioner",
    "convert_first_stage",
    "convert_unet",
    "ema_unet",
    "first_stage_config",
    "read_compvis_state_dict",
    "unet_config",
]
