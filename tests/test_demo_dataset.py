"""webui/demo/dataset.py: the synthetic caption/image dataset for the embedded demo model.

Captions are checked by parsing them back (a small independent parser below), images by the pixels
(borders, object colours, where each object's pixels sit) and by the heuristic analyser.
"""
from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from webui.demo import dataset as ds

COLOURS, SHAPES, SIZES = set(ds.COLOURS), set(ds.SHAPES), set(ds.SIZES)
POSITION_RE = re.compile(r"\b(top left|top right|bottom left|bottom right|center)\b")
RELATION_RE = re.compile(r"\b(left of|right of|above|below)\b")


def parse(text: str) -> dict:
    """Caption -> {"objects": [(size|None, colour, shape)], "background", "position", "relation"}."""
    tokens = text.replace(",", " ").split()
    objects, background = [], None
    for i, tok in enumerate(tokens):
        if tok in SHAPES:
            assert i >= 1 and tokens[i - 1] in COLOURS, f"shape without colour in {text!r}"
            objects.append((tokens[i - 2] if i >= 2 and tokens[i - 2] in SIZES else None, tokens[i - 1], tok))
        elif tok in COLOURS and not (i + 1 < len(tokens) and tokens[i + 1] in SHAPES):
            assert background is None, f"two background colours in {text!r}"
            background = tok
    positions = POSITION_RE.findall(text)
    relations = RELATION_RE.findall(text)
    assert len(positions) <= 1 and len(relations) <= 1, text
    return {"objects": objects, "background": background, "position": positions[0] if positions else None,
            "relation": relations[0] if relations else None}


def check_caption(text: str, scene: ds.Scene) -> None:
    p = parse(text)
    assert len(p["objects"]) == len(scene.objects), text
    assert p["background"] in (None, scene.background), text
    if len(scene.objects) == 1:
        (size, colour, shape), obj = p["objects"][0], scene.objects[0]
        assert (colour, shape) == (obj.colour, obj.shape), text
        assert size in (None, obj.size), text
        assert p["position"] in (None, obj.position) and p["relation"] is None, text
        return
    assert p["position"] is None and p["relation"] is not None, text
    said = [(c, s) for _, c, s in p["objects"]]
    real = [(o.colour, o.shape) for o in scene.objects]
    assert sorted(said) == sorted(real), text
    rel = scene.relation if said == real else ds.RELATIONS[scene.relation]
    assert p["relation"] == rel, (text, scene)
    for (size, colour, shape) in p["objects"]:
        assert size in (None, next(o.size for o in scene.objects if (o.colour, o.shape) == (colour, shape)))


def skeleton(text: str) -> str:
    """The wording with every vocabulary word replaced by its kind."""
    text = POSITION_RE.sub("P", RELATION_RE.sub("R", text))
    kinds = [(COLOURS, "C"), (SHAPES, "S"), (SIZES, "Z"), ({"a", "an"}, "A")]
    return " ".join(next((k for words, k in kinds if t in words), t) for t in text.split())


@pytest.fixture(scope="module")
def samples():
    rng = np.random.default_rng(2024)
    scenes = [ds.sample_scene(rng, two_object_prob=0.3) for _ in range(2000)]
    return [(s, ds.caption(s, rng)) for s in scenes]


# ------------------------------------------------------------------------------------- determinism

def test_make_dataset_is_deterministic_from_the_seed():
    a, b, c = ds.make_dataset(30, 7), ds.make_dataset(30, 7), ds.make_dataset(30, 8)
    assert [(x[1], x[2]) for x in a] == [(x[1], x[2]) for x in b]
    assert all(x[0].tobytes() == y[0].tobytes() for x, y in zip(a, b))
    assert [x[1] for x in a] != [x[1] for x in c]
    assert [(x[1], x[2]) for x in ds.make_dataset(10, 7)] == [(x[1], x[2]) for x in a[:10]]  # prefix
    big = ds.make_dataset(30, 7, size=128)
    assert [(x[1], x[2]) for x in big] == [(x[1], x[2]) for x in a] and big[0][0].size == (128, 128)
    assert all(im.mode == "RGB" and im.size == (64, 64) for im, _, _ in a)
    with pytest.raises(ValueError):
        ds.make_dataset(1, 0, split="test")


def test_render_without_rng_is_exact_and_keeps_objects_inside():
    rng = np.random.default_rng(3)
    for _ in range(200):
        scene = ds.sample_scene(rng, two_object_prob=0.5)
        assert ds.render(scene).tobytes() == ds.render(scene).tobytes()
        img = np.asarray(ds.render(scene, 64, rng)).reshape(-1, 64, 3)
        border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
        assert (border == ds.COLOURS[scene.background]).all(), scene
        for obj in scene.objects:
            assert obj.colour != scene.background
            assert (img == ds.COLOURS[obj.colour]).all(-1).sum() > 30, scene  # an unblended core


def test_two_object_layout_matches_the_relation():
    rng = np.random.default_rng(4)
    checked = 0
    while checked < 100:
        scene = ds.sample_scene(rng, two_object_prob=1.0)
        a, b = scene.objects
        if a.colour == b.colour:
            continue
        img = np.asarray(ds.render(scene, 64, rng))
        (ya, xa), (yb, xb) = (np.argwhere((img == ds.COLOURS[o.colour]).all(-1)).mean(0) for o in (a, b))
        expected = {"left of": xa < xb - 15, "right of": xa > xb + 15, "above": ya < yb - 15, "below": ya > yb + 15}
        assert expected[scene.relation], scene
        checked += 1


# ------------------------------------------------------------------------------------------ captions

def test_captions_never_contradict_the_scene(samples):
    for scene, text in samples:
        check_caption(text, scene)
        check_caption(ds.canonical_caption(scene), scene)
    scene = ds.Scene("blue", (ds.Obj("circle", "red", "large", "top left"),))
    assert ds.canonical_caption(scene) == "a large red circle on a blue background, top left"
    assert "an orange" in ds.canonical_caption(ds.Scene("orange", (ds.Obj("square", "red", "small", "center"),)))


def test_vocabulary_coverage(samples):
    objs = [o for s, _ in samples for o in s.objects]
    assert {o.colour for o in objs} == COLOURS and {s.background for s, _ in samples} == COLOURS
    assert {o.shape for o in objs} == SHAPES and {o.size for o in objs} == SIZES
    assert {o.position for o in objs} == set(ds.POSITIONS)
    pairs = [(s, t) for s, t in samples if len(s.objects) == 2]
    assert 450 < len(pairs) < 750
    assert {s.relation for s, _ in pairs} == set(ds.RELATIONS)
    assert {parse(t)["relation"] for _, t in pairs} == set(ds.RELATIONS)
    words = Counter(w for _, t in samples for w in t.replace(",", " ").split())
    assert all(words[w] > 20 for w in COLOURS | SHAPES | SIZES | {"background", "top", "bottom", "center"})
    assert set(ds.VOCABULARY) == {"colours", "shapes", "sizes", "positions", "relations"}
    assert all(len(rgb) == 3 for rgb in ds.VOCABULARY["colours"].values())
    with pytest.raises(TypeError):
        ds.VOCABULARY["colours"]["pink"] = (255, 150, 200)


def test_wording_varies(samples):
    single = Counter(skeleton(t) for s, t in samples if len(s.objects) == 1)
    pair = Counter(skeleton(t) for s, t in samples if len(s.objects) == 2)
    assert len(single) >= 40 and len(pair) >= 20
    assert single.most_common(1)[0][1] < 0.1 * sum(single.values())  # no dominant template
    rng = np.random.default_rng(0)
    scene = samples[0][0]
    assert len({ds.caption(scene, rng) for _ in range(100)}) >= 15
    parsed = [parse(t) for s, t in samples if len(s.objects) == 1]
    for key in ("position", "background"):  # optional parts are sometimes left out, mostly said
        share = sum(p[key] is None for p in parsed) / len(parsed)
        assert 0.1 < share < 0.45, (key, share)
    assert 0.1 < sum(p["objects"][0][0] is None for p in parsed) / len(parsed) < 0.45


# ------------------------------------------------------------------------------------------ held out

def test_held_out_combinations():
    rng = np.random.default_rng(5)
    train = [ds.sample_scene(rng, exclude_held_out=True) for _ in range(2000)]
    assert not any(ds.is_held_out(s) for s in train)
    assert not any(ds.is_held_out(s) for _, _, s in ds.make_dataset(500, 1))
    seen = {(o.colour, o.shape, o.position) for s in train for o in s.objects}
    assert not seen & ds.HELD_OUT
    for colour, shape, position in ds.HELD_OUT:  # every word of a held-out combination is still taught
        assert any(c == colour for c, _, _ in seen) and any(s == shape for _, s, _ in seen)
        assert any(p == position for _, _, p in seen)
    rng = np.random.default_rng(5)
    assert sum(ds.is_held_out(ds.sample_scene(rng)) for _ in range(2000)) > 50
    held = ds.held_out_scenes(200, 9)
    assert held == ds.held_out_scenes(200, 9) and all(ds.is_held_out(s) for s in held)
    assert {(s.objects[0].colour, s.objects[0].shape, s.objects[0].position) for s in held} == ds.HELD_OUT
    assert all(s.background != s.objects[0].colour for s in held)
    assert all(ds.is_held_out(s) for _, _, s in ds.make_dataset(50, 2, split="held_out"))


# ------------------------------------------------------------------------------------------ analyser

@pytest.mark.parametrize("size", [64, 128])
def test_analyser_accuracy_on_rendered_scenes(size):
    rng = np.random.default_rng(100 + size)
    hits, n = Counter(), 300
    for _ in range(n):
        scene = ds.sample_scene(rng, two_object_prob=0.0)
        result, obj = ds.analyse(ds.render(scene, size, rng)), scene.objects[0]
        assert result["found"] and result["background"] == scene.background
        hits.update(k for k in ("colour", "position", "shape", "size") if result[k] == getattr(obj, k))
    acc = {k: hits[k] / n for k in ("colour", "position", "shape", "size")}
    assert acc["colour"] >= 0.98 and acc["position"] >= 0.98 and acc["shape"] >= 0.95, acc
    assert acc["size"] >= 0.95, acc


def test_analyser_hint_and_empty_image():
    scene = ds.Scene("yellow", (ds.Obj("triangle", "orange", "small", "bottom right"),))
    image = ds.render(scene, 64)
    for hint in ("yellow", ds.COLOURS["yellow"], None):
        r = ds.analyse(image, background_hint=hint)
        assert (r["colour"], r["shape"], r["position"], r["size"]) == ("orange", "triangle", "bottom right", "small")
        assert 0.6 < r["centroid"][0] < 1 and 0.6 < r["centroid"][1] < 1
    assert ds.analyse(Image.new("RGB", (64, 64), (30, 80, 220)))["found"] is False
    noisy = np.asarray(ds.render(ds.Scene("white", (ds.Obj("diamond", "blue", "large", "center"),)), 128), float)
    noisy = noisy + np.random.default_rng(0).normal(0, 12, noisy.shape)
    r = ds.analyse(Image.fromarray(noisy.clip(0, 255).astype(np.uint8)))
    assert (r["colour"], r["shape"], r["position"], r["size"]) == ("blue", "diamond", "center", "large")
