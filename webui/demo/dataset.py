"""Synthetic captioned scenes for the embedded demo model: procedural, deterministic, numpy + PIL only.

A scene is one coloured shape (sometimes two, side by side or stacked) on a plain background. Captions
are plain English in varied wording ("a large red circle on a blue background, top left", "blue
background with a circle in the top left", "an orange square above a white triangle"); parts left out
of a caption are still random in the scene, and a caption never contradicts its image.
Some (colour, shape, position) combinations are held out of training (`HELD_OUT`) so a model can be
tested on combinations it never saw. `analyse` is the heuristic judge for single-object images.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
from PIL import Image, ImageDraw

COLOURS = MappingProxyType({
    "red": (220, 30, 30), "green": (30, 160, 60), "blue": (30, 80, 220), "yellow": (250, 220, 30),
    "orange": (255, 135, 0), "purple": (140, 50, 190), "white": (245, 245, 245), "black": (20, 20, 20),
})
SHAPES = ("circle", "square", "triangle", "diamond")
# bounding-box side / image width. "small" is 0.3, not less: at the 64 px native size a smaller shape covers
# 2x2 latent pixels and no f=8 VAE of this size keeps a triangle apart from a circle (measured: 37 % of
# small shapes survive its round trip at 0.25, docs/demo-model-notes.md)
SIZES = MappingProxyType({"small": 0.3, "large": 0.45})
POSITIONS = MappingProxyType({  # (x, y) centres of the 3x3 grid's corner and centre cells
    "top left": (1 / 6, 1 / 6), "top right": (5 / 6, 1 / 6), "center": (0.5, 0.5),
    "bottom left": (1 / 6, 5 / 6), "bottom right": (5 / 6, 5 / 6),
})
RELATIONS = MappingProxyType({"left of": "right of", "right of": "left of", "above": "below", "below": "above"})
VOCABULARY = MappingProxyType({"colours": COLOURS, "shapes": SHAPES, "sizes": SIZES,
                               "positions": POSITIONS, "relations": tuple(RELATIONS)})
HELD_OUT = frozenset({  # (colour, shape, position) never shown in training; each word still is
    ("red", "triangle", "bottom right"), ("green", "circle", "top left"), ("blue", "square", "center"),
    ("yellow", "diamond", "top right"), ("orange", "circle", "bottom left"),
    ("purple", "square", "top right"), ("white", "triangle", "top left"),
    ("black", "diamond", "bottom left"), ("red", "diamond", "center"), ("blue", "triangle", "bottom right"),
})
JITTER = 0.025  # max centre offset (fraction of the width) when render() gets an rng
MARGIN = 0.02   # objects are kept this far inside the image (large corner objects move inwards)


@dataclass(frozen=True)
class Obj:
    shape: str
    colour: str
    size: str
    position: str


@dataclass(frozen=True)
class Scene:
    background: str
    objects: tuple[Obj, ...]

    @property
    def relation(self) -> str | None:
        """For two objects: how objects[0] stands to objects[1] ("left of", "above", ...)."""
        if len(self.objects) != 2:
            return None
        (x0, y0), (x1, y1) = (POSITIONS[o.position] for o in self.objects)
        if x0 != x1:
            return "left of" if x0 < x1 else "right of"
        return "above" if y0 < y1 else "below"


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def is_held_out(scene: Scene) -> bool:
    return any((o.colour, o.shape, o.position) in HELD_OUT for o in scene.objects)


def sample_scene(rng: np.random.Generator, two_object_prob: float = 0.2,
                 exclude_held_out: bool = False) -> Scene:
    while True:
        if rng.random() < two_object_prob:
            side = _pick(rng, ("top", "bottom", "left", "right"))
            pair = ((f"{side} left", f"{side} right") if side in ("top", "bottom")
                    else (f"top {side}", f"bottom {side}"))
            pair = pair[::-1] if rng.random() < 0.5 else pair
            objs = tuple(Obj(_pick(rng, SHAPES), _pick(rng, tuple(COLOURS)), _pick(rng, tuple(SIZES)), p)
                         for p in pair)
            if objs[0].colour == objs[1].colour and objs[0].shape == objs[1].shape:
                continue  # the caption could not tell them apart
        else:
            objs = (Obj(_pick(rng, SHAPES), _pick(rng, tuple(COLOURS)), _pick(rng, tuple(SIZES)),
                        _pick(rng, tuple(POSITIONS))),)
        backgrounds = tuple(c for c in COLOURS if c not in {o.colour for o in objs})
        scene = Scene(_pick(rng, backgrounds), objs)
        if not (exclude_held_out and is_held_out(scene)):
            return scene


def held_out_scenes(n: int, seed: int) -> list[Scene]:
    """`n` single-object scenes, each showing one `HELD_OUT` combination (random size and background)."""
    rng, combos = np.random.default_rng(seed), sorted(HELD_OUT)
    scenes = []
    for _ in range(n):
        colour, shape, position = _pick(rng, combos)
        obj = Obj(shape, colour, _pick(rng, tuple(SIZES)), position)
        scenes.append(Scene(_pick(rng, tuple(c for c in COLOURS if c != colour)), (obj,)))
    return scenes


OUTLINE = 0.06   # outline width (fraction of the width) of the "outlined" style (the demo LoRA's)


def render(scene: Scene, size: int = 64, rng: np.random.Generator | None = None, *, style: str = "filled",
           centres: list[tuple[float, float]] | None = None) -> Image.Image:
    """Draw at 4x and box-downsample (anti-aliased). With `rng`, centres get a small random jitter.

    ``style``: "filled" (the demo model's pictures), "outlined" (only a coloured outline: the demo LoRA's
    style) or "mask" (white shapes on black: the demo ControlNet's hint). ``centres`` (fractions of the
    width) place the objects anywhere instead of at their named positions."""
    if style not in ("filled", "outlined", "mask"):
        raise ValueError(f"style must be filled, outlined or mask, not {style!r}")
    big = size * 4
    image = Image.new("RGB", (big, big), (0, 0, 0) if style == "mask" else COLOURS[scene.background])
    draw = ImageDraw.Draw(image)
    for i, obj in enumerate(scene.objects):
        h = SIZES[obj.size] / 2
        centre = np.array(centres[i] if centres is not None else POSITIONS[obj.position])
        if rng is not None:
            centre = centre + rng.uniform(-JITTER, JITTER, 2)
        cx, cy = np.clip(centre, h + MARGIN, 1 - h - MARGIN) * big
        r = h * big
        colour = (255, 255, 255) if style == "mask" else COLOURS[obj.colour]
        paint = {"outline": colour, "width": max(1, round(OUTLINE * big))} if style == "outlined" else {"fill": colour}
        if obj.shape == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), **paint)
        elif obj.shape == "square":
            draw.rectangle((cx - r, cy - r, cx + r, cy + r), **paint)
        elif obj.shape == "triangle":
            draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], **paint)
        else:  # diamond
            draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], **paint)
    return image.reduce(4)


def interior_share(image: Image.Image, background_hint: str | None = None) -> float | None:
    """How much of the object's inner half (the middle of its bounding box) is background-coloured:
    near 0 for a filled shape, high for an outlined one. None when no object is found."""
    found = analyse(image, background_hint)
    if not found.get("found"):
        return None
    img = np.asarray(image.convert("RGB"), dtype=np.float32)
    x0, y0, x1, y1 = (np.array(found["bbox"]) * img.shape[1]).round().astype(int)
    w, h = x1 - x0, y1 - y0
    inner = img[y0 + h // 4:y1 - h // 4, x0 + w // 4:x1 - w // 4].reshape(-1, 3)
    if not len(inner):
        return None
    bg = np.array(COLOURS[found["background"]], dtype=np.float32)
    obj = np.array(found["rgb"], dtype=np.float32)
    return float((np.linalg.norm(inner - bg, axis=1) < np.linalg.norm(inner - obj, axis=1)).mean())


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _noun(obj: Obj, rng: np.random.Generator) -> str:
    words = ([obj.size] if rng.random() < 0.7 else []) + [obj.colour, obj.shape]
    text = " ".join(words)
    return _a(text) if rng.random() < 0.75 else text


_SINGLE = {  # (position said, background said) -> templates
    (True, True): ("{obj} {on}, {pos}", "{obj} {at} {on}", "{obj} {on} {at}", "{obj}, {pos}, {bg} background",
                   "{bg} background, {obj} {at}", "{bg} background with {obj} {at}", "{at}, {obj} {on}"),
    (True, False): ("{obj}, {pos}", "{obj} {at}", "{at}, {obj}"),
    (False, True): ("{obj} {on}", "{bg} background with {obj}", "{obj}, {bg} background", "{bg} background, {obj}"),
    (False, False): ("{obj}",),
}
_PAIR = ("{core}", "{core} {on}", "{core}, {bg} background", "{bg} background, {core}")
_REL_WORDS = {"left of": ("left of", "to the left of"), "right of": ("right of", "to the right of"),
              "above": ("above",), "below": ("below",)}


def caption(scene: Scene, rng: np.random.Generator) -> str:
    """A randomly worded caption; size, position and background may be left out, never contradicted."""
    bg = scene.background
    on = _pick(rng, ("on {} background".format(_a(bg)), f"on {bg}", "against {} background".format(_a(bg))))
    if len(scene.objects) == 2:
        a, b, rel = *scene.objects, scene.relation
        if rng.random() < 0.5:
            a, b, rel = b, a, RELATIONS[rel]
        core = f"{_noun(a, rng)} {_pick(rng, _REL_WORDS[rel])} {_noun(b, rng)}"
        return _pick(rng, _PAIR).format(core=core, on=on, bg=bg)
    obj = scene.objects[0]
    pos, noun = obj.position, _noun(obj, rng)
    at = _pick(rng, ("in the {}", "at the {}")).format(pos)
    template = _pick(rng, _SINGLE[(bool(rng.random() < 0.8), bool(rng.random() < 0.7))])
    return template.format(obj=noun, pos=pos, at=at, on=on, bg=bg)


def canonical_caption(scene: Scene) -> str:
    """The one fixed wording: "a large red circle on a blue background, top left"."""
    nouns = [_a(f"{o.size} {o.colour} {o.shape}") for o in scene.objects]
    on = "on {} background".format(_a(scene.background))
    if len(nouns) == 2:
        return f"{nouns[0]} {scene.relation} {nouns[1]} {on}"
    return f"{nouns[0]} {on}, {scene.objects[0].position}"


def make_dataset(n: int, seed: int, size: int = 64, split: str = "train") -> list[tuple[Image.Image, str, Scene]]:
    """`n` (image, caption, scene) triples, deterministic from `seed` (a prefix of any longer run, and
    the same scenes and captions at every `size`). split: "train" skips held-out scenes, "all" does not,
    "held_out" gives single-object held-out scenes only."""
    if split not in ("train", "all", "held_out"):
        raise ValueError(f"split must be 'train', 'all' or 'held_out', not {split!r}")
    rng = np.random.default_rng(seed)
    if split == "held_out":
        scenes = held_out_scenes(n, seed)
        return [(render(s, size, rng), caption(s, rng), s) for s in scenes]
    out = []
    for _ in range(n):
        scene = sample_scene(rng, exclude_held_out=split == "train")
        out.append((render(scene, size, rng), caption(scene, rng), scene))
    return out


def _nearest_colour(pixels: np.ndarray, exclude: str | None = None) -> np.ndarray:
    names = [c for c in COLOURS if c != exclude]
    palette = np.array([COLOURS[c] for c in names], dtype=np.float32)
    return np.array(names)[np.argmin(((pixels[:, None, :] - palette[None]) ** 2).sum(-1), axis=1)]


def analyse(image: Image.Image, background_hint: str | tuple | None = None) -> dict:
    """Judge a single-object image: its colour, position, size and shape (vocabulary words).

    The background is `background_hint` (a colour name or RGB) or the median border pixel. Object
    pixels are those closer to the object's colour than to the background's; position is read from
    the object's bounding-box centre, size from the box's longer side, shape from how much of the box
    is filled (square 1, circle 0.79, triangle / diamond 0.5) and, for 0.5, from where the mass sits
    (a triangle's is in its lower half). Returns {"found": False} when nothing stands out.
    """
    img = np.asarray(image.convert("RGB"), dtype=np.float32)
    side = max(img.shape[:2])
    if isinstance(background_hint, str):
        bg = np.array(COLOURS[background_hint], dtype=np.float32)
    elif background_hint is not None:
        bg = np.array(background_hint, dtype=np.float32)
    else:
        border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
        bg = np.median(border, axis=0)
    bg_name = str(_nearest_colour(bg[None])[0])
    dist = np.linalg.norm(img - bg, axis=-1)
    ref = np.percentile(dist, 99)
    if ref < 30:
        return {"found": False, "background": bg_name}
    candidates = img[dist > ref / 2]
    votes = _nearest_colour(candidates, exclude=bg_name)
    colour = Counter(votes.tolist()).most_common(1)[0][0]
    obj_rgb = np.median(candidates[votes == colour], axis=0)
    axis = obj_rgb - bg
    mask = ((img - bg) @ axis) / max(float(axis @ axis), 1e-6) > 0.5
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return {"found": False, "background": bg_name}
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    fill = len(xs) / ((x1 - x0) * (y1 - y0))
    cx, cy = (x0 + x1) / 2 / img.shape[1], (y0 + y1) / 2 / img.shape[0]
    if max(abs(cx - 0.5), abs(cy - 0.5)) < 0.14:
        position = "center"
    else:
        position = ("top" if cy < 0.5 else "bottom") + (" left" if cx < 0.5 else " right")
    lower = (ys >= (y0 + y1) / 2).mean()  # share of the mass in the box's lower half
    if fill > 0.9:
        shape = "square"
    elif fill > 0.65:
        shape = "circle"
    else:
        shape = "triangle" if lower > 0.62 else "diamond"
    extent = max(x1 - x0, y1 - y0) / side
    return {"found": True, "colour": colour, "rgb": tuple(int(v) for v in obj_rgb), "background": bg_name,
            "position": position, "size": "large" if extent > (SIZES["small"] + SIZES["large"]) / 2 else "small", "shape": shape,
            "centroid": (float(xs.mean() / img.shape[1]), float(ys.mean() / img.shape[0])),
            "bbox": (x0 / img.shape[1], y0 / img.shape[0], x1 / img.shape[1], y1 / img.shape[0]),
            "fill": float(fill), "extent": float(extent)}
