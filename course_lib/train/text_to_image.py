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

from course_lib.models.clip import CLIPTextEncoder
from course_lib.models.tokenizer import CLIPStyleTokenizer
from course_lib.models.unet import UNetConfig
from course_lib.models.vae import AutoencoderKL
from course_lib.train.latents import encode_latents
from course_lib.worlds.shapeworld import ShapeWorld

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
    """Prompts -> the frozen text encoder's last hidden state, with a cache per prompt.

    ``mask_padding=False`` (SD's way): ``(B, 77, D)`` states of the padded prompts, the U-Net reads
    all 77 positions. ``mask_padding=True``: ``(B, L, D)`` states and a ``(B, L)`` mask, L the
    longest prompt of the batch, so that the U-Net reads only each prompt's own tokens (start,
    words, end); the pipeline does the same at inference. The text encoder is causal, so a token's
    state does not depend on the padding after it, and cutting the padding changes nothing else.
    ShapeWorld has a finite grammar, so the same caption comes back often during training; the
    cache makes the frozen text encoder cost almost nothing. The empty prompt ``""`` gives the
    unconditional embedding (as in SD: the encoding of an empty prompt, not zeros).
    Defined in notebook 09_text_conditioning.
    """

    def __init__(self, tokenizer: CLIPStyleTokenizer, text_encoder: CLIPTextEncoder, cache: bool = True,
                 mask_padding: bool = False):
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder.eval().requires_grad_(False)
        self.mask_padding = mask_padding
        self._cache: dict[str, torch.Tensor] | None = {} if cache else None

    @property
    def context_dim(self) -> int:
        return self.text_encoder.config.hidden_size

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str]) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``(B, 77, D)`` states, or with ``mask_padding`` a pair ``(B, L, D)`` states and ``(B, L)`` mask."""
        prompts = list(prompts)
        if self._cache is None:
            states = list(self._encode(prompts))
        else:
            missing = sorted({p for p in prompts if p not in self._cache})
            if missing:
                for p, emb in zip(missing, self._encode(missing), strict=True):
                    self._cache[p] = emb
            states = [self._cache[p] for p in prompts]
        if not self.mask_padding:
            return torch.stack(states)                              # (B, 77, D)
        length = max(len(s) for s in states)
        context = states[0].new_zeros(len(states), length, states[0].shape[-1])
        mask = torch.zeros(len(states), length, dtype=torch.bool)
        for i, s in enumerate(states):
            context[i, :len(s)], mask[i, :len(s)] = s, True
        return context, mask                                        # (B, L, D), (B, L)

    def _encode(self, prompts: list[str]) -> list[torch.Tensor]:
        """Each prompt's states: (77, D), or with ``mask_padding`` only its own tokens (n_i, D)."""
        device = next(self.text_encoder.parameters()).device
        ids, mask = self.tokenizer(prompts, return_attention_mask=True)   # (B, 77)
        states = self.text_encoder(ids.to(device)).last_hidden_state.cpu()   # (B, 77) -> (B, 77, D)
        if not self.mask_padding:
            return list(states)
        return [s[:int(n)] for s, n in zip(states, mask.sum(dim=1), strict=True)]


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
            encoded = text(prompts)
            if isinstance(encoded, tuple):                      # a U-Net that reads only the prompts' tokens
                return self.latents[idx], {"context": encoded[0], "context_mask": encoded[1]}
            return self.latents[idx], {"context": encoded}

        return next_batch
