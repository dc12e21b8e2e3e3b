"""Offline datasets: one in-memory transition format, loaders for D4RL HDF5 files and Minari
datasets, trajectory sub-sampling, and normalised scores that always say which reference they use."""

from .scores import D4RL_REFERENCES, NormalizedScore, ScoreReference, d4rl_reference, normalized_score
from .transitions import DATA_CUTS, DatasetError, Transitions

__all__ = ["Transitions", "DatasetError", "DATA_CUTS", "ScoreReference", "NormalizedScore", "D4RL_REFERENCES",
           "d4rl_reference", "normalized_score", "load_d4rl_hdf5", "load_minari", "minari_reference"]


def __getattr__(name: str):  # loaders import h5py / minari only when used (the `rl` extra)
    if name == "load_d4rl_hdf5":
        from .d4rl import load_d4rl_hdf5

        return load_d4rl_hdf5
    if name in ("load_minari", "minari_reference"):
        from . import minari_io

        return getattr(minari_io, name)
    raise AttributeError(name)
