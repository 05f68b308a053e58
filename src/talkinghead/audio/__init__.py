"""Audio: decoding any common file to 16 kHz mono, and speech features (HuBERT) at 25 fps."""
