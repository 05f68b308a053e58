"""VQGAN first-stage losses (DiT-Head's VQGANs, DiffTalk's autoencoder): reconstruction,
perceptual (LPIPS) and adversarial (PatchGAN).

`VQGANLoss` combines them as taming-transformers' VQGAN does: pixel L1 (or L2)
plus an LPIPS term, the codebook loss, and a hinge GAN loss whose weight is set
adaptively by the ratio of the gradient norms of the reconstruction and GAN
terms at the decoder's last layer, switched on after ``disc_start`` steps.

`LPIPS` is the architecture of Zhang et al. (2018) with a VGG16 trunk (the same
layer indices as torchvision's ``vgg16().features``, so its state_dict keys are
``net.features.<i>.weight``) and five 1x1 "lin" heads. Without pretrained weights
a perceptual network is meaningless, so `VQGANLoss(perceptual=None)` is the
L1/L2-only mode; `load_lpips` reads the weights from a folder. No torchvision is needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# VGG16 "features" configuration: channels, "M" = 2x2 max-pool.
_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
# Indices in that Sequential right after relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.
_LPIPS_TAPS = (4, 9, 16, 23, 30)
_LPIPS_CHANNELS = (64, 128, 256, 512, 512)
# LPIPS's input normalisation for images in [-1, 1].
_LPIPS_SHIFT = (-0.030, -0.088, -0.188)
_LPIPS_SCALE = (0.458, 0.448, 0.450)


class VGG16Features(nn.Module):
    """torchvision's ``vgg16().features`` layer layout (up to relu5_3), no torchvision."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        ch = 3
        for v in _VGG16:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(ch, int(v), 3, padding=1), nn.ReLU(inplace=False)]
                ch = int(v)
        self.features = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps, start = [], 0
        for stop in _LPIPS_TAPS:
            for layer in self.features[start:stop]:
                x = layer(x)
            taps.append(x)
            start = stop
        return taps


class _Lin(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        # Index 1 (after a dropout slot) so keys read "lin<i>.model.1.weight" as in LPIPS.
        self.model = nn.Sequential(nn.Identity(), nn.Conv2d(ch, 1, 1, bias=False))


class LPIPS(nn.Module):
    """Learned perceptual distance; forward(x, y) -> [B] for images in [-1, 1]. Frozen."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("shift", torch.tensor(_LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)
        self.net = VGG16Features()
        for i, ch in enumerate(_LPIPS_CHANNELS):
            self.add_module(f"lin{i}", _Lin(ch))
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> LPIPS:
        return super().train(False)  # always in eval mode

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        fx = self.net((x - self.shift) / self.scale)
        fy = self.net((y - self.shift) / self.scale)
        total = 0.0
        for i, (a, b) in enumerate(zip(fx, fy, strict=True)):
            a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            lin = getattr(self, f"lin{i}").model
            total = total + lin((a - b).pow(2)).mean(dim=(1, 2, 3))
        return total


def load_lpips(directory: Path) -> LPIPS:
    """LPIPS from ``vgg16.pth`` (torchvision's ImageNet VGG16, any file whose keys include
    ``features.<i>.weight``) and ``vgg.pth`` (the LPIPS "lin" layers) in ``directory``."""
    from talkinghead.errors import CheckpointError

    directory = Path(directory)
    trunk, lin = directory / "vgg16.pth", directory / "vgg.pth"
    for p in (trunk, lin):
        if not p.is_file():
            raise CheckpointError(f"{p}: perceptual-loss weights not found")
    net = LPIPS()
    from talkinghead.models.loading import load_failure

    loaded = []
    for p in (trunk, lin):
        try:
            loaded.append(torch.load(p, map_location="cpu", weights_only=True))
        except Exception as e:
            raise CheckpointError(
                f"{p}: cannot read the LPIPS weights: {load_failure(p, e)}"
            ) from None
    sd_trunk, sd_lin = loaded
    state = {f"net.{k}": v for k, v in sd_trunk.items() if k.startswith("features.")}
    state.update({k: v for k, v in sd_lin.items() if k.startswith("lin")})
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{directory}: LPIPS weights do not fit ({e})") from None
    return net.eval()


class PatchDiscriminator(nn.Module):
    """PatchGAN discriminator (Isola et al.): strided 4x4 convs, batch norm, leaky ReLU.

    Output [B, 1, h, w] logits, one per overlapping patch.
    """

    def __init__(self, in_channels: int = 3, ndf: int = 64, n_layers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, ndf, 4, 2, 1),
            nn.LeakyReLU(0.2, True),
        ]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, 4, stride, 1, bias=False),
                nn.BatchNorm2d(ndf * mult),
                nn.LeakyReLU(0.2, True),
            ]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, 1, 1))
        self.main = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


@dataclass(frozen=True)
class VQGANLossConfig:
    """Weights of the stage-1 objective (taming's defaults where they exist)."""

    pixel: str = "l1"  # "l1" or "l2"
    pixel_weight: float = 1.0
    perceptual_weight: float = 1.0  # used only when an LPIPS network is given
    codebook_weight: float = 1.0
    disc_weight: float = 0.75
    disc_start: int = 10_000  # generator steps before the GAN term switches on
    disc_layers: int = 3
    disc_channels: int = 64

    def __post_init__(self) -> None:
        if self.pixel not in ("l1", "l2"):
            raise ValueError(f"pixel loss must be 'l1' or 'l2', got {self.pixel!r}")


class VQGANLoss(nn.Module):
    """The stage-1 objective; call `generator_loss` and `discriminator_loss` alternately."""

    def __init__(self, config: VQGANLossConfig | None = None, perceptual: LPIPS | None = None):
        super().__init__()
        self.config = config or VQGANLossConfig()
        self.perceptual = perceptual
        self.discriminator = PatchDiscriminator(
            ndf=self.config.disc_channels, n_layers=self.config.disc_layers
        )

    def gan_active(self, step: int) -> bool:
        return self.config.disc_weight > 0 and step >= self.config.disc_start

    def reconstruction(self, x: torch.Tensor, rec: torch.Tensor) -> torch.Tensor:
        diff = (rec - x).abs() if self.config.pixel == "l1" else (rec - x).pow(2)
        loss = self.config.pixel_weight * diff.mean()
        if self.perceptual is not None and self.config.perceptual_weight > 0:
            loss = loss + self.config.perceptual_weight * self.perceptual(x, rec).mean()
        return loss

    def _adaptive_weight(
        self, rec_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor
    ) -> torch.Tensor:
        rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
        g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
        weight = rec_grad.norm() / (g_grad.norm() + 1e-4)
        return weight.clamp(0.0, 1e4).detach() * self.config.disc_weight

    def generator_loss(
        self,
        x: torch.Tensor,
        rec: torch.Tensor,
        codebook_loss: torch.Tensor,
        step: int,
        last_layer: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        rec_loss = self.reconstruction(x, rec)
        total = rec_loss + self.config.codebook_weight * codebook_loss
        logs = {"rec": rec_loss.item(), "codebook": codebook_loss.item()}
        if self.gan_active(step):
            g_loss = -self.discriminator(rec).mean()
            if last_layer is not None and torch.is_grad_enabled():
                weight = self._adaptive_weight(rec_loss, g_loss, last_layer)
            else:
                weight = torch.tensor(self.config.disc_weight)
            total = total + weight * g_loss
            logs.update(g=g_loss.item(), g_weight=float(weight))
        logs["total"] = total.item()
        return total, logs

    def discriminator_loss(self, x: torch.Tensor, rec: torch.Tensor) -> torch.Tensor:
        return hinge_d_loss(self.discriminator(x.detach()), self.discriminator(rec.detach()))
