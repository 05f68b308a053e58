"""DiffTalk: a latent-diffusion UNet conditioned on smoothed audio features and landmarks.

`pipeline` (generation at 256 or 512), `data` (preparation and the training dataset),
`train` (autoencoder and LDM stages), `convert` (CompVis-layout checkpoints into ours),
`commands` (``train-difftalk``, ``convert-difftalk``); inference and training share
`features` (crops, landmarks, masks, audio windows) and `checkpoint` (the checkpoint
format) and never import each other.
"""
