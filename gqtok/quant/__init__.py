"""Gaussian Quant itself: the seeded codebook, the exact search, token layouts and TDC.

Nothing here knows about files or images. ``config`` is importable without torch.
"""
