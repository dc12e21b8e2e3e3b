"""Denoising networks."""

from .mlp import MLPDenoiser, SinusoidalEmbedding

MLP = MLPDenoiser

__all__ = ["MLP", "MLPDenoiser", "SinusoidalEmbedding"]
