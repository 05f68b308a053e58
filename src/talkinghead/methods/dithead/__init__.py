"""DiT-Head: a latent diffusion transformer that inpaints the lower face from audio.

`pipeline` (generation, evolving inference, interpolation in `interpolation`), `data`
(preparation), `train` (VQGAN and DiT stages), `commands` (``train-dithead``).
"""
