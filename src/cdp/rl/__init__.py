"""Offline RL: BC and EDP, with CDP = EDP + the contraction term, on one shared trainer."""
