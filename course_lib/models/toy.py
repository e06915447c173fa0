"""The small networks of notebook 01's 2-D experiments besides the GAN's. Defined in notebook 01_gan_vs_diffusion.

``MLPDenoiser(x, t) -> predicted noise`` for 2-D points (trained by ``course_lib.train.toy_diffusion``,
and by notebook 12 as a rectified-flow velocity model), and ``ToyModelZoo``, the sampling networks of
several 2-D runs in one module, for one checkpoint file.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from course_lib.models.embeddings import timestep_embedding
from course_lib.models.gan import MLPGANConfig, MLPGenerator

__all__ = ["MLPDenoiserConfig", "MLPDenoiser", "TOY_DENOISER", "ToyModelZoo"]


@dataclass
class MLPDenoiserConfig:
    """Sizes of the 2-D denoiser. Supports notebook 01_gan_vs_diffusion.

    ``time_embed_dim``: size of the sinusoidal timestep embedding; ``hidden``/``layers``: width and
    number of residual hidden layers.
    """

    data_dim: int = 2
    hidden: int = 128
    layers: int = 3
    time_embed_dim: int = 32

    def validate(self) -> None:
        for name in ("data_dim", "hidden", "layers", "time_embed_dim"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"MLPDenoiserConfig.{name} must be a positive int, got {v!r}")
        if self.time_embed_dim % 2:
            raise ValueError(f"MLPDenoiserConfig.time_embed_dim must be even (cos and sin halves), "
                             f"got {self.time_embed_dim}")


class MLPDenoiser(nn.Module):
    """Predicts the noise in 2-D points: ``(x (B, data_dim), t (B,)) -> eps (B, data_dim)``.

    The timestep goes through a sinusoidal embedding and a small MLP; it is added to the input
    projection and to every residual layer (``h = h + Linear(SiLU(h + time))``).
    Defined in notebook 01_gan_vs_diffusion.
    """

    def __init__(self, config: MLPDenoiserConfig | None = None):
        super().__init__()
        self.config = config = config or MLPDenoiserConfig()
        config.validate()
        h = config.hidden
        self.time_mlp = nn.Sequential(nn.Linear(config.time_embed_dim, h), nn.SiLU(), nn.Linear(h, h))
        self.input = nn.Linear(config.data_dim, h)
        self.layers = nn.ModuleList([nn.Linear(h, h) for _ in range(config.layers)])
        self.act = nn.SiLU()
        self.output = nn.Linear(h, config.data_dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        d = self.config.data_dim
        if not torch.is_tensor(x) or x.ndim != 2 or x.shape[1] != d:
            got = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise ValueError(f"MLPDenoiser takes points of shape (B, {d}), got {got}")
        if not torch.is_tensor(t) or t.shape != (x.shape[0],):
            got = tuple(t.shape) if torch.is_tensor(t) else type(t).__name__
            raise ValueError(f"t must be a (B,) tensor of timesteps, one per point (B={x.shape[0]}), got {got}; "
                             "use torch.full((B,), t) for a single timestep")
        temb = self.time_mlp(timestep_embedding(t, self.config.time_embed_dim).to(x.dtype))  # (B,) -> (B, hidden)
        h = self.input(x) + temb                                                       # (B, d) -> (B, hidden)
        for layer in self.layers:
            h = h + layer(self.act(h + temb))
        return self.output(self.act(h))                                                # (B, hidden) -> (B, d)


#: 2-D denoiser of notebook 01: 71k parameters, as many as the 2-D GAN's generator and discriminator together.
TOY_DENOISER = MLPDenoiserConfig(data_dim=2, hidden=128, layers=3, time_embed_dim=32)


class ToyModelZoo(nn.ModuleDict):
    """The sampling networks of several 2-D runs in one module, for one checkpoint file.

    Entry ``"{mixture}_gan"`` is a ModuleList of ``MLPGenerator`` (one per seed), and
    ``"{mixture}_diffusion"`` one of ``MLPDenoiser`` (the EMA weights). ``gan`` and ``denoiser``
    are config dicts. Defined in notebook 01_gan_vs_diffusion.
    """

    def __init__(self, mixtures: tuple[str, ...] | list[str] = ("ring8", "grid25"), seeds: int = 5,
                 gan: dict | None = None, denoiser: dict | None = None):
        if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
            raise ValueError(f"seeds must be a positive int (the number of runs per mixture), got {seeds!r}")
        gan_cfg, den_cfg = MLPGANConfig(**(gan or {})), MLPDenoiserConfig(**(denoiser or {}))
        modules: dict[str, nn.Module] = {}
        for m in mixtures:
            modules[f"{m}_gan"] = nn.ModuleList([MLPGenerator(gan_cfg) for _ in range(seeds)])
            modules[f"{m}_diffusion"] = nn.ModuleList([MLPDenoiser(den_cfg) for _ in range(seeds)])
        super().__init__(modules)
        self.mixtures, self.seeds = tuple(mixtures), seeds

    def runs(self, mixture: str, kind: str) -> nn.ModuleList:
        """The networks of every seed for ``mixture`` and ``kind`` (``"gan"`` or ``"diffusion"``)."""
        key = f"{mixture}_{kind}"
        if key not in self:
            raise KeyError(f"no runs for mixture {mixture!r} and kind {kind!r}; mixtures: {self.mixtures}, "
                           "kinds: 'gan', 'diffusion'")
        return self[key]
