"""Denoising networks: ``net(a_t, t, cond) -> eps or x0`` with the action's shape.

- :class:`MLPDenoiser` (alias ``MLP``): single actions or flattened chunks (DQL / EDP's 3 x 256 Mish);
- :class:`UNet1D`: temporal UNet with FiLM over an action chunk ``[B, Tp, d]`` (Diffusion Policy);
- :class:`DiT`: transformer over action tokens with adaLN-Zero.
"""

from .dit import DiT
from .mlp import MLPDenoiser, Mish, SinusoidalEmbedding
from .unet1d import UNet1D

MLP = MLPDenoiser

__all__ = ["DiT", "MLP", "MLPDenoiser", "Mish", "SinusoidalEmbedding", "UNet1D"]
