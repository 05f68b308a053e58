"""DiT-Head: a latent diffusion transformer that inpaints the lower face from audio.

Inference: `pipeline` (generation, evolving inference), `interpolation` (stage 3,
2x frames). Training: `data` (dataset preparation and sampling), `train` (VQGAN and
DiT stages), `commands` (``train-dithead``). Shared by both sides, so neither imports
the other: `config` (crop, mask and audio settings), `features` (face crop, mask,
audio windows, image tensors) and `checkpoint` (the checkpoint format).
"""
