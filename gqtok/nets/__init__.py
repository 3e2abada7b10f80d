"""The networks: the reference UNet and ViT (parameter-compatible), their tiling and shared
GroupNorm statistics, and ST-LPIPS. ``config`` is importable without torch."""
