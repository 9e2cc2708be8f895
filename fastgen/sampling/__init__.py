"""Incremental samplers (PixelCNN, WaveNet, diffusion loops) -- built in the issues after the foundation."""
