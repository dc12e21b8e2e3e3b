"""Denoising networks."""

from .mlp import MLPDenoiser, Mish, SinusoidalEmbedding

MLP = MLPDenoiser

__all__ = ["MLP", "MLPDenoiser", "Mish", "SinusoidalEmbedding"]
