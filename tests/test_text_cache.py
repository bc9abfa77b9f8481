"""The text-embedding disk cache: hits skip the text tower; any key change, or a damaged or
foreign file, rebuilds the entry (with a warning for bad files)."""

import os
import shutil

import pytest
import torch
from detectron2.modeling import build_model

from conftest import FEW_TEMPLATES, capturing_warnings, save_random_checkpoint, tiny_cfg
from clearclip_d2.constants import CACHE_DIR_ENV, default_text_cache_dir
from clearclip_d2.modeling.clip.text_cache import TextEmbeddingCache

CLASSES = ["background", "cat, kitten", "dog"]


def cached_model(model_files, cache_dir, **overrides):
    cfg = tiny_cfg(model_files, **{"MODEL.CLEARCLIP.CACHE_DIR": str(cache_dir), **overrides})
    model = build_model(cfg).eval()
    model.set_vocabulary(CLASSES)
    return model


def text_tower_calls(model):
    """Count calls of the text tower (encode_text) on ``model``; returns the counter list."""
    calls = []
    original = model.clip_model.encode_text

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    model.clip_model.encode_text = counting
    return calls


def entries(cache_dir):
    return sorted(name for name in os.listdir(cache_dir) if name.endswith(".safetensors")) if os.path.isdir(cache_dir) else []


def test_a_hit_skips_the_text_tower_and_gives_the_same_embeddings(tiny_model_files, tmp_path):
    first = cached_model(tiny_model_files, tmp_path)
    first_calls = text_tower_calls(first)
    built = first.text_embeddings()
    assert first_calls and len(entries(tmp_path)) == 1
    second = cached_model(tiny_model_files, tmp_path)
    second_calls = text_tower_calls(second)
    loaded = second.text_embeddings()
    assert second_calls == []
    assert torch.equal(loaded, built)


def test_no_cache_dir_means_no_files(tiny_model_files, tmp_path):
    model = build_model(tiny_cfg(tiny_model_files, **{"MODEL.CLEARCLIP.CACHE_DIR": ""})).eval()
    model.set_vocabulary(CLASSES)
    model.text_embeddings()
    assert model.text_cache is None


def test_every_key_part_gives_its_own_entry(tiny_model_files, tmp_path):
    model_json, checkpoint = tiny_model_files
    cached_model(tiny_model_files, tmp_path).text_embeddings()
    assert len(entries(tmp_path)) == 1

    other_classes = cached_model(tiny_model_files, tmp_path)
    other_classes.set_vocabulary(["background", "cat", "dog"])  # synonyms are part of the key
    calls = text_tower_calls(other_classes)
    other_classes.text_embeddings()
    assert calls and len(entries(tmp_path)) == 2

    other_templates = cached_model(tiny_model_files, tmp_path, **{"MODEL.CLEARCLIP.PROMPT_TEMPLATES": FEW_TEMPLATES[:2]})
    calls = text_tower_calls(other_templates)
    other_templates.text_embeddings()
    assert calls and len(entries(tmp_path)) == 3

    # Other weights in a file with the same name: keyed by content, not by path.
    weights_dir = tmp_path / "weights"
    weights_dir.mkdir()
    moved = str(weights_dir / os.path.basename(checkpoint))
    save_random_checkpoint(model_json, moved, seed=7)
    other_weights = cached_model((model_json, moved), tmp_path)
    calls = text_tower_calls(other_weights)
    other_weights.text_embeddings()
    assert calls and len(entries(tmp_path)) == 4
    save_random_checkpoint(model_json, moved, seed=8)
    os.utime(moved, ns=(os.stat(moved).st_atime_ns, os.stat(moved).st_mtime_ns + 10**9))
    rewritten = cached_model((model_json, moved), tmp_path)
    calls = text_tower_calls(rewritten)
    rewritten.text_embeddings()
    assert calls and len(entries(tmp_path)) == 5

    # Another architecture (model-config JSON with another text width), random weights.
    import json

    with open(model_json) as f:
        config = json.load(f)
    config["text_cfg"]["layers"] = 1
    other_json = str(tmp_path / "tiny-vit-one-text-layer.json")
    with open(other_json, "w") as f:
        json.dump(config, f)
    other_model = cached_model((other_json, ""), tmp_path)
    calls = text_tower_calls(other_model)
    other_model.text_embeddings()
    assert calls and len(entries(tmp_path)) == 6

    # Same content again: a hit.
    again = cached_model(tiny_model_files, tmp_path)
    calls = text_tower_calls(again)
    again.text_embeddings()
    assert calls == [] and len(entries(tmp_path)) == 6


def damage_truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def damage_garbage(path):
    with open(path, "wb") as f:
        f.write(b"not a safetensors file at all")


def damage_values(path):
    """A well-formed file with the right key but changed numbers (not unit rows)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(path, framework="pt") as f:
        metadata, tensor = f.metadata(), f.get_tensor("text_embeddings")
    save_file({"text_embeddings": tensor * 3}, path, metadata=metadata)


@pytest.mark.parametrize("damage", [damage_truncate, damage_garbage, damage_values, "foreign"])
def test_a_bad_file_is_rebuilt_with_a_warning(tiny_model_files, tmp_path, caplog, damage):
    model = cached_model(tiny_model_files, tmp_path)
    expected = model.text_embeddings()
    (name,) = entries(tmp_path)
    path = os.path.join(tmp_path, name)
    if damage == "foreign":  # a valid entry of another vocabulary, under this entry's name
        other = cached_model(tiny_model_files, tmp_path / "other")
        other.set_vocabulary(["background", "bird", "tree"])
        other.text_embeddings()
        shutil.copy(os.path.join(tmp_path / "other", entries(tmp_path / "other")[0]), path)
    else:
        damage(path)
    fresh = cached_model(tiny_model_files, tmp_path)
    calls = text_tower_calls(fresh)
    with capturing_warnings(caplog, "clearclip_d2.modeling.clip.text_cache"):
        rebuilt = fresh.text_embeddings()
    assert calls, "a damaged entry was trusted"
    assert "rebuilding it" in caplog.text
    assert torch.allclose(rebuilt, expected, atol=1e-6)
    assert TextEmbeddingCache(str(tmp_path), fresh.text_cache.model).load(path, name[: -len(".safetensors")], 4) is not None


def test_the_default_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(CACHE_DIR_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_text_cache_dir() == os.path.join(str(tmp_path), "clearclip_d2", "text_embeddings")
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "mine"))
    assert default_text_cache_dir() == str(tmp_path / "mine")


def test_an_unwritable_folder_only_warns(tiny_model_files, tmp_path, caplog):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    model = cached_model(tiny_model_files, blocker / "cache")
    with capturing_warnings(caplog, "clearclip_d2.modeling.clip.text_cache"):
        embeddings = model.text_embeddings()
    assert embeddings.shape == (4, 32)
    assert "cannot write the text-embedding cache" in caplog.text
