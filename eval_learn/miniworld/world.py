"""The MiniWorld: 32×32 images of one shape in one colour on one background, drawn procedurally from a seed.

Three attributes give every concept near and far neighbours, so that erasing one shows what else it damages:
six colours (red's nearest neighbours are orange and purple, its farthest green and blue), four shapes and three
background styles. No dataset files exist; every image is drawn from a ``numpy`` generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SIZE = 32
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (245, 135, 20),
    "yellow": (235, 215, 35),
    "green": (40, 165, 55),
    "blue": (35, 75, 225),
    "purple": (145, 50, 195),
}
SHAPES = ("circle", "square", "triangle", "cross")
BACKGROUNDS = ("plain", "dark", "striped")
# The concepts next to each colour (for retention metrics): similar hue first.
NEAR = {
    "red": ("orange", "purple"),
    "orange": ("red", "yellow"),
    "yellow": ("orange", "green"),
    "green": ("yellow", "blue"),
    "blue": ("purple", "green"),
    "purple": ("blue", "red"),
}
TEMPLATES = ("{}", "a {}", "a photo of a {}", "a picture of a {}", "an image of a {}")
FILLER_WORDS = ("a", "an", "of", "on", "photo", "picture", "image", "shape", "something", "background")
SPARE_WORDS = ("nudity", "style", "painting", "dog", "car", "person")  # unseen in training: erasable, judged as nothing
WORDS = FILLER_WORDS + tuple(COLOURS) + SHAPES + BACKGROUNDS + SPARE_WORDS


def concept_kind(concept: str) -> str | None:
    """'colour', 'shape' or 'background' for a MiniWorld concept, else None."""
    if concept in COLOURS:
        return "colour"
    if concept in SHAPES:
        return "shape"
    if concept in BACKGROUNDS:
        return "background"
    return None


@dataclass(frozen=True)
class Scene:
    colour: str
    shape: str
    background: str

    def label(self) -> tuple[int, int, int]:
        return list(COLOURS).index(self.colour), SHAPES.index(self.shape), BACKGROUNDS.index(self.background)


def _background(style: str, rng: np.random.Generator) -> np.ndarray:
    img = np.empty((SIZE, SIZE, 3), np.float32)
    if style == "plain":
        img[:] = rng.uniform(215, 250)
    elif style == "dark":
        img[:] = rng.uniform(25, 60)
    else:  # striped: horizontal light and mid-grey bands, 4 px each, random phase
        light, mid = rng.uniform(215, 245), rng.uniform(130, 160)
        rows = (np.arange(SIZE) + rng.integers(0, 8)) // 4 % 2
        img[:] = np.where(rows[:, None, None] == 0, light, mid)
    return img


def _mask(shape: str, rng: np.random.Generator) -> np.ndarray:
    r = rng.uniform(7, 12)
    cx, cy = rng.uniform(r + 1, SIZE - r - 1, size=2)
    y, x = np.mgrid[0:SIZE, 0:SIZE] + 0.5
    dx, dy = x - cx, y - cy
    if shape == "circle":
        return dx**2 + dy**2 <= r**2
    if shape == "square":
        h = r * 0.85
        return (np.abs(dx) <= h) & (np.abs(dy) <= h)
    if shape == "triangle":  # pointing up, base at cy + r/2
        top, base = cy - r, cy + r * 0.6
        half = (y - top) / (base - top) * r
        return (y >= top) & (y <= base) & (np.abs(dx) <= half)
    arm = r * 0.35  # cross (plus sign)
    return ((np.abs(dx) <= arm) & (np.abs(dy) <= r)) | ((np.abs(dy) <= arm) & (np.abs(dx) <= r))


def render(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """One image of ``scene`` as uint8 [32, 32, 3]; colour jitter ±20 per channel, random size and position."""
    return render_with_mask(scene, rng)[0]


def render_with_mask(scene: Scene, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """:func:`render` (the same image for the same ``rng`` state) and the shape's exact pixel mask, bool [32, 32]:
    where a colour or shape concept is; its complement is where the background is."""
    img = _background(scene.background, rng)
    colour = np.clip(np.array(COLOURS[scene.colour], np.float32) + rng.uniform(-20, 20, 3), 0, 255)
    mask = _mask(scene.shape, rng)
    img[mask] = colour
    return img.round().astype(np.uint8), mask


def random_scene(rng: np.random.Generator) -> Scene:
    return Scene(str(rng.choice(list(COLOURS))), str(rng.choice(SHAPES)), str(rng.choice(BACKGROUNDS)))


def prompt_for(scene: Scene, rng: np.random.Generator) -> str:
    """A training caption: usually colour + shape, often with the background, sometimes one attribute alone."""
    kind = rng.random()
    template = TEMPLATES[rng.integers(len(TEMPLATES))]
    if kind < 0.40:
        return template.format(f"{scene.colour} {scene.shape}") + f" on a {scene.background} background"
    if kind < 0.78:
        return template.format(f"{scene.colour} {scene.shape}")
    if kind < 0.86:
        return (f"a {scene.colour} shape", f"something {scene.colour}", scene.colour)[rng.integers(3)]
    if kind < 0.95:
        return template.format(scene.shape)
    return f"a {scene.background} background"


def prompt(
    colour: str | None = None, shape: str | None = None, background: str | None = None, template: str = "a {}"
) -> str:
    """An evaluation prompt naming the given attributes, in the training captions' wording."""
    if colour and shape:
        text = template.format(f"{colour} {shape}")
    elif shape:
        text = template.format(shape)
    elif colour:
        text = f"a {colour} shape"
    else:
        return f"a {background} background" if background else ""
    return f"{text} on a {background} background" if background else text
