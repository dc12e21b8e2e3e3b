"""cdp: Contractive Diffusion Policies.

The core is loaded on first use (``cdp.ContractionConfig``, ``from cdp import sample``), so that
``import cdp`` and the command line's help do not load torch."""

from importlib import import_module

__version__ = "0.1.0"
_HOMES = {"ContractionConfig": "contraction", "ContractionRegularizer": "contraction", "contraction_loss": "contraction",
          "max_sym_eig": "contraction", "VPSchedule": "diffusion", "denoising_loss": "diffusion", "sample": "diffusion"}
__all__ = list(_HOMES)


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(import_module(f".{_HOMES[name]}", __name__), name)
    raise AttributeError(f"module 'cdp' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])
