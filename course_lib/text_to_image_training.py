"""Training the text-conditioned latent U-Net on ShapeWorld. Defined in notebook 09_text_conditioning.

Stable Diffusion's recipe at the course's scale: images go through the frozen autoencoder of
notebook 08 (32x32x3 -> 8x8x4, times its scale factor), captions through the frozen CLIP text
encoder of notebook 04 ((B, 77) token ids -> (B, 77, 64) states), and a U-Net with cross-attention
learns to predict the noise of the latents given the caption. A share of the captions
(``caption_dropout``, 10% as in SD) is replaced by the empty prompt, so that the same network
also learns the *unconditional* prediction that classifier-free guidance needs.

    data = LatentCaptionData.from_shapeworld(vae, n=60000, seed=TRAIN_SEED)
    text = TextConditioner(tokenizer, text_encoder)
    result = train_diffusion_model(unet, data.batches(text, caption_dropout=0.1), schedule, config)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .clip import CLIPTextEncoder
from .shapeworld import ShapeWorld
from .tokenizer import CLIPStyleTokenizer
from .unet import UNetConfig
from .vae import AutoencoderKL
from .vae_training import encode_latents

__all__ = [
    "SHIPPED_T2I_UNET",
    "T2I_UNET_CONFIG",
    "TRAIN_SEED",
    "TextConditioner",
    "LatentCaptionData",
    "t2i_unet_config",
]

SHIPPED_T2I_UNET = "shapeworld_t2i_unet"
TRAIN_SEED = 9_000_000  # ShapeWorld seeds of the training latents; evaluation uses seeds far below


def t2i_unet_config(latent_channels: int = 4, latent_size: int = 8, context_dim: int = 64,
                    block_out_channels: tuple[int, ...] = (32, 64, 64), head_dim: int = 16,
                    layers_per_block: int = 1, norm_num_groups: int = 16) -> UNetConfig:
    """The latent U-Net's sizes: cross-attention at every level (8x8, 4x4, 2x2 and the middle),
    ``head_dim`` channels per head and linear projections, as in SD 2.

    Defined in notebook 09_text_conditioning.
    """
    return UNetConfig(in_channels=latent_channels, out_channels=latent_channels, sample_size=latent_size,
                      block_out_channels=block_out_channels, layers_per_block=layers_per_block,
                      attention_levels=tuple(range(len(block_out_channels))), norm_num_groups=norm_num_groups,
                      cross_attention_dim=context_dim, num_attention_heads=None, attention_head_dim=head_dim,
                      use_linear_projection=True)


T2I_UNET_CONFIG = t2i_unet_config()


class TextConditioner:
    """Prompts -> the text encoder's last hidden state (B, 77, D), frozen, with a cache per prompt.

    ShapeWorld has a finite grammar, so the same caption comes back often during training; the
    cache makes the frozen text encoder cost almost nothing. The empty prompt ``""`` gives the
    unconditional embedding (as in SD: the encoding of an empty prompt, not zeros).
    Defined in notebook 09_text_conditioning.
    """

    def __init__(self, tokenizer: CLIPStyleTokenizer, text_encoder: CLIPTextEncoder, cache: bool = True):
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder.eval().requires_grad_(False)
        self._cache: dict[str, torch.Tensor] | None = {} if cache else None

    @property
    def context_dim(self) -> int:
        return self.text_encoder.config.hidden_size

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str]) -> torch.Tensor:
        prompts = list(prompts)
        if self._cache is None:
            return self._encode(prompts)
        missing = sorted({p for p in prompts if p not in self._cache})
        if missing:
            for p, emb in zip(missing, self._encode(missing), strict=True):
                self._cache[p] = emb
        return torch.stack([self._cache[p] for p in prompts])

    def _encode(self, prompts: list[str]) -> torch.Tensor:
        device = next(self.text_encoder.parameters()).device
        ids = self.tokenizer(prompts).to(device)                    # (B, 77)
        return self.text_encoder(ids).last_hidden_state            # (B, 77) -> (B, 77, D)


@dataclass
class LatentCaptionData:
    """Scaled autoencoder latents (N, 4, 8, 8) of ShapeWorld training images and their captions.

    Encoding once and reusing the latents is what makes latent diffusion cheap to train here: the
    autoencoder is frozen, so its output for an image never changes. Defined in notebook 09_text_conditioning.
    """

    latents: torch.Tensor
    captions: list[str]

    @classmethod
    def from_shapeworld(cls, vae: AutoencoderKL, n: int, seed: int = TRAIN_SEED, split: str = "train",
                        chunk: int = 5000) -> LatentCaptionData:
        world = ShapeWorld()
        latents, captions = [], []
        for i, start in enumerate(range(0, n, chunk)):
            batch = world.sample(min(chunk, n - start), seed=seed + i, split=split)
            with torch.no_grad():
                latents.append(encode_latents(vae, batch.tensors()))
            captions.extend(batch.captions)
        return cls(torch.cat(latents), captions)

    def __len__(self) -> int:
        return len(self.captions)

    def batches(self, text: Callable[[Sequence[str]], torch.Tensor], caption_dropout: float = 0.1
                ) -> Callable[[int, torch.Generator], tuple[torch.Tensor, dict[str, Any]]]:
        """A batch function for ``train_diffusion_model``: ``(B, generator) -> (latents, {"context": ...})``.

        Each caption is replaced by ``""`` with probability ``caption_dropout``.
        """
        if not 0 <= caption_dropout < 1:
            raise ValueError(f"caption_dropout must lie in [0, 1), got {caption_dropout!r} (SD used 0.1)")

        def next_batch(batch_size: int, g: torch.Generator) -> tuple[torch.Tensor, dict[str, Any]]:
            idx = torch.randint(0, len(self), (batch_size,), generator=g)
            drop = torch.rand(batch_size, generator=g) < caption_dropout
            prompts = ["" if d else self.captions[i] for i, d in zip(idx.tolist(), drop.tolist(), strict=True)]
            return self.latents[idx], {"context": text(prompts)}

        return next_batch
