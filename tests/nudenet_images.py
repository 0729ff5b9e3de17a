"""Deterministic test images for NudeNet parity: a drawn cartoon torso that NudeNet v3's detector reads as
FEMALE_BREAST_EXPOSED at scores 0.1-0.8 depending on colours, blur and aspect ratio (odd seeds are 384x512, so a
plain resize and NudeNet's pad-to-square differ). Drawn with PIL only, so the same pixels on every machine."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SEEDS = tuple(range(12))


def cartoon(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    size = (384, 512) if seed % 2 else (512, 512)
    image = Image.new("RGB", size, tuple(int(v) for v in rng.integers(0, 255, 3)))
    draw = ImageDraw.Draw(image)
    skin = (int(rng.integers(180, 240)), int(rng.integers(120, 180)), int(rng.integers(90, 150)))
    draw.ellipse([120, 100, 400, 500], fill=skin)
    for cx in (190, 320):
        draw.ellipse([cx - 50, 220, cx + 50, 320], fill=tuple(max(0, c - 20) for c in skin))
        draw.ellipse([cx - 10, 262, cx + 10, 282], fill=(150, 80, 70))
    draw.ellipse([200, 0, 310, 110], fill=skin)
    return image.filter(ImageFilter.GaussianBlur(int(rng.integers(0, 6))))
