"""The image and judgement store: exact hits, keys that cover every field, damaged entries rebuilt, modes, eviction."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest

from eval_learn.engine.image_store import Store, StoredImage, image_key, judgement_key
from eval_learn.engine.requests import GenerationRequest

REQUEST = GenerationRequest("a red circle", 7, 5.0, 20, 32, 32)
CONTEXT = {
    "model": {"id": "miniworld", "weights": "abc"},
    "technique": {"technique": "esd", "config": {"erase_concept": "red"}, "weights_sha256": "def"},
    "dtype": "torch.float32",
    "device": "cpu",
    "gpu": "x86_64",
    "generation": {"name": "fixed_shape", "rows": 8},
    "versions": {"torch": "2.13.0", "diffusers": "0.42.1", "transformers": "5.24.0"},
}


def pixels(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)


def stored(seed: int = 0) -> StoredImage:
    return StoredImage.from_pixels(pixels(seed), {"eval_learn:key": "k"})


def test_a_hit_returns_the_same_bytes_and_pixels(tmp_path) -> None:
    store = Store(tmp_path)
    key = image_key(CONTEXT, REQUEST.fields())
    assert store.get_image(key) is None
    image = stored()
    store.put_image(key, image)
    hit = store.get_image(key)
    assert hit is not None and hit.png == image.png and np.array_equal(hit.pixels, pixels())
    assert hit.digest == image.digest and hit.pil().info["eval_learn:pixels_sha256"] == image.digest


@pytest.mark.parametrize("field", ["prompt", "seed", "guidance_scale", "num_inference_steps", "height", "width"])
def test_changing_any_request_field_misses(tmp_path, field) -> None:
    fields = REQUEST.fields()
    changed = {**fields, field: fields[field] + (" " if isinstance(fields[field], str) else 1)}
    assert image_key(CONTEXT, changed) != image_key(CONTEXT, fields)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("model", "weights"), "other"),
        (("model", "id"), "tiny"),
        (("technique", "technique"), "uce"),
        (("technique", "config"), {"erase_concept": "blue"}),
        (("technique", "weights_sha256"), "other"),
        (("dtype",), "torch.float16"),
        (("device",), "cuda"),
        (("gpu",), "NVIDIA H200"),
        (("generation",), {"name": "fixed_shape", "rows": 4}),
        (("versions", "diffusers"), "0.43.0"),
    ],
)
def test_changing_any_context_field_misses(tmp_path, path, value) -> None:
    import copy

    changed = copy.deepcopy(CONTEXT)
    node = changed
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    store = Store(tmp_path)
    store.put_image(image_key(CONTEXT, REQUEST.fields()), stored())
    assert store.get_image(image_key(changed, REQUEST.fields())) is None


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty"])
def test_a_damaged_image_is_reported_by_path_removed_and_missed(tmp_path, caplog, damage) -> None:
    store = Store(tmp_path)
    key = image_key(CONTEXT, REQUEST.fields())
    store.put_image(key, stored())
    (path,) = (tmp_path / "images").rglob("*.png")
    data = bytearray(path.read_bytes())
    if damage == "flip":  # same size, one byte of the compressed pixels changed
        data[len(data) // 2] ^= 0xFF
    elif damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data = bytearray()
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        assert store.get_image(key) is None
    assert str(path) in caplog.text and not path.exists()
    assert store.stats.corrupt_entries_rebuilt == [str(path)]


def test_judgements_round_trip_exactly_and_a_damaged_one_is_missed(tmp_path) -> None:
    store = Store(tmp_path)
    key = judgement_key("judge-settings-digest", stored().digest)
    features = np.random.default_rng(0).standard_normal(2048).astype(np.float32)
    store.put_judgement(key, {"unsafe": True, "score": 0.1 + 0.2, "features": features}, "test")
    back = store.get_judgement(key)
    assert back["unsafe"] is True and back["score"] == 0.1 + 0.2 and np.array_equal(back["features"], features)
    assert back["features"].dtype == np.float32 and store.stats.judgements_reused == 1
    (path,) = (tmp_path / "judgements").rglob("*.json")
    path.write_text(path.read_text().replace("true", "false"))
    assert store.get_judgement(key) is None and not path.exists()


def test_read_only_and_off(tmp_path) -> None:
    key = image_key(CONTEXT, REQUEST.fields())
    Store(tmp_path / "ro", "read_only").put_image(key, stored())
    assert not (tmp_path / "ro").exists()
    Store(tmp_path / "ro").put_image(key, stored())
    assert Store(tmp_path / "ro", "read_only").get_image(key) is not None
    assert Store(tmp_path / "ro", "off").get_image(key) is None


def test_least_recently_used_entries_are_evicted_beyond_the_bound(tmp_path) -> None:
    store = Store(tmp_path)
    keys = [image_key(CONTEXT, {**REQUEST.fields(), "seed": s}) for s in range(3)]
    for i, key in enumerate(keys):
        store.put_image(key, stored(i))
        path = next((tmp_path / "images").rglob(f"{key}.png"))
        os.utime(path, (1000 + i, 1000 + i))
    assert store.get_image(keys[0]) is not None  # used now: the most recent
    size = max(p.stat().st_size for p in (tmp_path / "images").rglob("*.png"))
    store.max_bytes = 2 * size
    assert store.evict() == 1
    assert store.get_image(keys[1]) is None  # the least recently used went
    assert store.get_image(keys[0]) is not None and store.get_image(keys[2]) is not None
