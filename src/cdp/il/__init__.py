"""Imitation learning: diffusion policies over action chunks (UNet / DiT backbones, with or
without the contraction term), BC-GMM, tasks and scripted demonstrations, robomimic-format data."""
