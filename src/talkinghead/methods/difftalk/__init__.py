"""DiffTalk: a latent-diffusion UNet conditioned on smoothed audio features and landmarks.

`pipeline` (generation at 256 or 512), `data` (preparation), `train` (autoencoder and
LDM stages), `commands` (``train-difftalk``).
"""
