"""cdp: Contractive Diffusion Policies."""

from .contraction import ContractionConfig, ContractionRegularizer, contraction_loss, max_sym_eig
from .diffusion import VPSchedule, denoising_loss, sample

__version__ = "0.1.0"
__all__ = ["VPSchedule", "denoising_loss", "sample", "max_sym_eig", "contraction_loss",
           "ContractionConfig", "ContractionRegularizer"]
