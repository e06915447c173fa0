"""Stable Diffusion's KL autoencoder: images to a small latent space and back.

Defined in notebook 08_latent_autoencoder.

Shape of the network, for ``block_out_channels=(32, 64, 64)`` on a 32x32 RGB image::

    encoder  conv_in                                   3 -> 32 ch, 32x32
             down_blocks.0  resnets, downsample        32 ch, 32x32 -> 16x16
             down_blocks.1  resnets, downsample        64 ch, 16x16 -> 8x8
             down_blocks.2  resnets                    64 ch, 8x8
             mid_block      resnet, attention, resnet
             conv_norm_out, SiLU, conv_out             -> 2 * latent_channels (mean, log-variance)
    quant_conv (1x1)                                   -> DiagonalGaussian posterior, 8x8
    post_quant_conv (1x1)                              latent_channels -> latent_channels
    decoder  conv_in, mid_block                        -> 64 ch, 8x8
             up_blocks.0..2 (layers_per_block + 1 resnets each, nearest x2 + conv in all but the last)
             conv_norm_out, SiLU, conv_out             -> 3 ch, 32x32

The state-dict keys are identical to diffusers' ``AutoencoderKL``, so its weights (and those of
the public Stable Diffusion VAE) load with ``load_state_dict(strict=True)``. Every GroupNorm has
``eps=1e-6``, as in SD's autoencoder (the U-Net uses 1e-5).

The posterior and the training loss are in ``posterior`` (``DiagonalGaussian``, ``vae_loss``), the
downsample and upsample blocks in ``resample``; both are importable from here too.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import NamedTuple

import torch
from torch import nn

from course_lib.models.attention import AttentionBlock
from course_lib.models.posterior import DiagonalGaussian, VAELoss, vae_loss
from course_lib.models.resample import Downsample2D, Upsample2D
from course_lib.models.resnet import ResnetBlock2D, check_group_norm

__all__ = ["AutoencoderConfig", "Encoder", "Decoder", "DiagonalGaussian", "AutoencoderKL",
           "AutoencoderOutput", "VAELoss", "vae_loss", "compute_scale_factor"]

VAE_NORM_EPS = 1e-6  # GroupNorm eps of SD's autoencoder (diffusers hard-codes it too)


@dataclass
class AutoencoderConfig:
    """Sizes of an ``AutoencoderKL``. Supports notebook 08_latent_autoencoder.

    The encoder halves the resolution once per entry of ``block_out_channels`` after the first, so
    images shrink by ``2 ** (len(block_out_channels) - 1)`` per side (SD: 4 levels -> 8x, a 512x512x3
    image becomes a 64x64x4 latent). ``scaling_factor`` multiplies latents before diffusion so they
    have about unit variance: 0.18215 is SD 1.x/2.x's value; the course measures its own with
    ``compute_scale_factor`` and stores it here. SD's own VAE: ``block_out_channels=(128, 256, 512,
    512)``, ``layers_per_block=2``, ``latent_channels=4``, ``norm_num_groups=32``.
    """

    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 1
    latent_channels: int = 4
    norm_num_groups: int = 32
    scaling_factor: float = 0.18215

    @property
    def downsample_factor(self) -> int:
        """How many times smaller the latent is than the image, per side."""
        return 2 ** (len(self.block_out_channels) - 1)

    def validate(self) -> None:
        """Raise a ``ValueError`` that says what to change if the sizes cannot build an autoencoder."""
        chans = tuple(self.block_out_channels)
        if len(chans) < 1 or any(not isinstance(c, int) or c < 1 for c in chans):
            raise ValueError(f"block_out_channels must be a non-empty tuple of positive ints, got {chans}")
        for name in ("in_channels", "out_channels", "layers_per_block", "latent_channels"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for i, c in enumerate(chans):
            check_group_norm(c, self.norm_num_groups, f"block_out_channels[{i}]")
        if not self.scaling_factor > 0:
            raise ValueError(f"scaling_factor must be positive, got {self.scaling_factor!r}; "
                             "measure one with compute_scale_factor(vae, images)")


def _resnet(in_channels: int, out_channels: int, config: AutoencoderConfig) -> ResnetBlock2D:
    # The autoencoder's residual blocks have no time embedding.
    return ResnetBlock2D(in_channels, out_channels, temb_channels=None,
                         groups=config.norm_num_groups, eps=VAE_NORM_EPS)


class DownEncoderBlock2D(nn.Module):
    """One encoder level: ``layers_per_block`` resnets, then (except at the last level) a stride-2
    downsample that pads right and bottom by one first. ``(B, C_in, H, W) -> (B, C_out, H/2, W/2)``.
    Names resnets.j, downsamplers.0.conv as in diffusers. Defined in notebook 08_latent_autoencoder.
    """

    def __init__(self, in_channels: int, out_channels: int, config: AutoencoderConfig, add_downsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList(
            [_resnet(in_channels if j == 0 else out_channels, out_channels, config)
             for j in range(config.layers_per_block)])
        # padding=0 means F.pad(x, (0, 1, 0, 1)) then a 3x3 stride-2 conv without padding, as in SD.
        self.downsamplers = (nn.ModuleList([Downsample2D(out_channels, padding=0)])
                             if add_downsample else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)                # (B, C, H, W) -> (B, C, H/2, W/2)
        return x


class UpDecoderBlock2D(nn.Module):
    """One decoder level: ``layers_per_block + 1`` resnets, then (except at the last level) nearest
    x2 upsampling and a 3x3 conv. ``(B, C_in, H, W) -> (B, C_out, 2H, 2W)``.
    Names resnets.j, upsamplers.0.conv as in diffusers. Defined in notebook 08_latent_autoencoder.
    """

    def __init__(self, in_channels: int, out_channels: int, config: AutoencoderConfig, add_upsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList(
            [_resnet(in_channels if j == 0 else out_channels, out_channels, config)
             for j in range(config.layers_per_block + 1)])
        self.upsamplers = nn.ModuleList([Upsample2D(out_channels)]) if add_upsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)                  # (B, C, H, W) -> (B, C, 2H, 2W)
        return x


class MidBlock2D(nn.Module):
    """The middle of encoder and decoder: resnet, single-head self-attention over all pixels, resnet.
    Shape-preserving ``(B, C, H, W)``. Names resnets.0, attentions.0, resnets.1 as in diffusers'
    ``UNetMidBlock2D``. Supports notebook 08_latent_autoencoder.
    """

    def __init__(self, channels: int, config: AutoencoderConfig):
        super().__init__()
        # attentions first, as diffusers registers them, so the state dict lists keys in its order
        self.attentions = nn.ModuleList(
            [AttentionBlock(channels, num_heads=1, groups=config.norm_num_groups, eps=VAE_NORM_EPS)])
        self.resnets = nn.ModuleList([_resnet(channels, channels, config) for _ in range(2)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x)
        x = self.attentions[0](x)
        return self.resnets[1](x)


class Encoder(nn.Module):
    """Image ``(B, in_channels, H, W)`` -> posterior parameters ``(B, 2*latent_channels, H/f, W/f)``
    with ``f = config.downsample_factor`` (mean and log-variance stacked on the channel axis).
    Supports notebook 08_latent_autoencoder.
    """

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        config.validate()
        self.config = config
        chans = tuple(config.block_out_channels)
        self.conv_in = nn.Conv2d(config.in_channels, chans[0], kernel_size=3, padding=1)
        self.down_blocks = nn.ModuleList(
            [DownEncoderBlock2D(chans[max(i - 1, 0)], chans[i], config, add_downsample=i < len(chans) - 1)
             for i in range(len(chans))])
        self.mid_block = MidBlock2D(chans[-1], config)
        self.conv_norm_out = nn.GroupNorm(config.norm_num_groups, chans[-1], eps=VAE_NORM_EPS)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(chans[-1], 2 * config.latent_channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_images(x, self.config)
        h = self.conv_in(x)                            # (B, in, H, W) -> (B, C0, H, W)
        for block in self.down_blocks:
            h = block(h)                               # ... -> (B, C_last, H/f, W/f)
        h = self.mid_block(h)
        h = self.conv_act(self.conv_norm_out(h))
        return self.conv_out(h)                        # (B, C_last, h, w) -> (B, 2*latent, h, w)


class Decoder(nn.Module):
    """Latent ``(B, latent_channels, h, w)`` -> image ``(B, out_channels, h*f, w*f)``.
    Supports notebook 08_latent_autoencoder.
    """

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        config.validate()
        self.config = config
        rev = tuple(reversed(config.block_out_channels))
        self.conv_in = nn.Conv2d(config.latent_channels, rev[0], kernel_size=3, padding=1)
        # up_blocks registered before mid_block (though it runs after), as in diffusers' key order
        self.up_blocks = nn.ModuleList(
            [UpDecoderBlock2D(rev[max(i - 1, 0)], rev[i], config, add_upsample=i < len(rev) - 1)
             for i in range(len(rev))])
        self.mid_block = MidBlock2D(rev[0], config)
        self.conv_norm_out = nn.GroupNorm(config.norm_num_groups, rev[-1], eps=VAE_NORM_EPS)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(rev[-1], config.out_channels, kernel_size=3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        _check_latents(z, self.config)
        h = self.conv_in(z)                            # (B, latent, h, w) -> (B, C_last, h, w)
        h = self.mid_block(h)
        for block in self.up_blocks:
            h = block(h)                               # ... -> (B, C0, h*f, w*f)
        h = self.conv_act(self.conv_norm_out(h))
        return self.conv_out(h)                        # (B, C0, H, W) -> (B, out, H, W)


class AutoencoderOutput(NamedTuple):
    """What ``AutoencoderKL.forward`` returns: the reconstruction and the posterior it decoded from."""

    sample: torch.Tensor
    posterior: DiagonalGaussian


class AutoencoderKL(nn.Module):
    """Stable Diffusion's KL-regularised autoencoder (Rombach et al. 2022, section 3).

    ``encode(x)`` -> ``DiagonalGaussian`` over latents ``(B, latent_channels, H/f, W/f)``;
    ``decode(z)`` -> image; ``forward(x)`` -> ``AutoencoderOutput(sample, posterior)``.
    Takes an ``AutoencoderConfig`` or its fields as keyword arguments. State-dict keys equal
    diffusers' ``AutoencoderKL``. Images are expected in [-1, 1], as in SD.
    Defined in notebook 08_latent_autoencoder.
    """

    def __init__(self, config: AutoencoderConfig | None = None, **kwargs):
        super().__init__()
        if config is not None and kwargs:
            raise TypeError("pass either an AutoencoderConfig or its fields as keyword arguments, not both")
        if config is None:
            try:
                config = AutoencoderConfig(**kwargs)
            except TypeError as e:
                raise TypeError(f"{e}; the fields of AutoencoderConfig are "
                                f"{list(AutoencoderConfig.__dataclass_fields__)}") from None
        if not isinstance(config, AutoencoderConfig):
            raise TypeError(f"config must be an AutoencoderConfig, got {type(config).__name__}")
        config = replace(config, block_out_channels=tuple(config.block_out_channels))  # a copy; JSON lists ok
        config.validate()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quant_conv = nn.Conv2d(2 * config.latent_channels, 2 * config.latent_channels, kernel_size=1)
        self.post_quant_conv = nn.Conv2d(config.latent_channels, config.latent_channels, kernel_size=1)

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        """Images ``(B, in_channels, H, W)`` -> posterior over ``(B, latent_channels, H/f, W/f)``."""
        moments = self.quant_conv(self.encoder(x))     # (B, 2*latent, h, w)
        return DiagonalGaussian(moments)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents ``(B, latent_channels, h, w)`` (unscaled) -> images ``(B, out_channels, h*f, w*f)``."""
        _check_latents(z, self.config)
        return self.decoder(self.post_quant_conv(z))

    def forward(self, x: torch.Tensor, sample_posterior: bool = False,
                generator: torch.Generator | None = None) -> AutoencoderOutput:
        """Encode, take the posterior's mean (or a sample with ``sample_posterior=True``), decode."""
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        return AutoencoderOutput(self.decode(z), posterior)


def _check_images(x: torch.Tensor, config: AutoencoderConfig) -> None:
    if not torch.is_tensor(x):
        raise TypeError(f"the autoencoder expects a tensor of images (B, {config.in_channels}, H, W), "
                        f"got {type(x).__name__}")
    if x.ndim != 4 or x.shape[1] != config.in_channels:
        raise ValueError(f"the encoder expects images of shape (B, {config.in_channels}, H, W), got "
                         f"{tuple(x.shape)}; add a batch axis with x[None] for one image, or build the "
                         f"autoencoder with in_channels={x.shape[1] if x.ndim == 4 else '...'}")
    f = config.downsample_factor
    height, width = x.shape[-2:]
    if height % f or width % f:
        example = f"{height // f * f or f}x{width // f * f or f}"
        raise ValueError(f"image size {height}x{width} is not divisible by the autoencoder's total "
                         f"downsampling factor {f} (= 2 ** (len(block_out_channels) - 1)); resize, crop "
                         f"or pad the images to a multiple of {f} (e.g. {example})")


def _check_latents(z: torch.Tensor, config: AutoencoderConfig) -> None:
    if not torch.is_tensor(z):
        raise TypeError(f"decode expects a tensor of latents (B, {config.latent_channels}, h, w), "
                        f"got {type(z).__name__}")
    if z.ndim != 4 or z.shape[1] != config.latent_channels:
        hint = (" (it has twice the latent channels: that is the posterior's parameters; decode "
                "posterior.mode() or posterior.sample() instead)"
                if z.ndim == 4 and z.shape[1] == 2 * config.latent_channels else "")
        raise ValueError(f"decode expects latents of shape (B, {config.latent_channels}, h, w), got "
                         f"{tuple(z.shape)}{hint}")


@torch.no_grad()
def compute_scale_factor(vae: AutoencoderKL, images: torch.Tensor, batch_size: int = 64,
                         generator: torch.Generator | None = None, sample_posterior: bool = True) -> float:
    """``1 / std`` of the latents of ``images``: the factor that gives diffusion unit-variance latents.

    This is SD's ``scale_by_std`` (``LatentDiffusion.on_train_batch_start``): encode training
    images, take a *sample* of each posterior (``get_first_stage_encoding`` calls
    ``posterior.sample()``), and set ``scale_factor = 1 / z.flatten().std()`` - one number for all
    channels, with torch's default unbiased std. SD did it on its first training batch and got
    0.18215; here every image in ``images`` counts, encoded ``batch_size`` at a time.
    ``sample_posterior=False`` uses the posterior means instead. Images go to the VAE's device.
    Defined in notebook 08_latent_autoencoder.
    """
    if not torch.is_tensor(images) or images.ndim != 4:
        raise ValueError(f"images must be a tensor (N, C, H, W), got "
                         f"{tuple(images.shape) if torch.is_tensor(images) else type(images).__name__}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    param = next(vae.parameters())
    was_training = vae.training
    vae.eval()
    try:
        latents = []
        for start in range(0, images.shape[0], batch_size):
            x = images[start:start + batch_size].to(device=param.device, dtype=param.dtype)
            posterior = vae.encode(x)
            z = posterior.sample(generator) if sample_posterior else posterior.mode()
            latents.append(z.float().cpu())
    finally:
        vae.train(was_training)
    z = torch.cat(latents)
    if z.numel() < 2:
        raise ValueError("need at least two latent values to measure a standard deviation; pass more images")
    return float(1.0 / z.flatten().std())
