"""Frame-level post-processing shared by the methods: 2x frame interpolation (RIFE or optical flow)."""
