"""Building the CLIP model: names, checkpoints, and the errors for bad values."""

import os
import pickle

import pytest
import torch

from conftest import TINY_VIT, save_random_checkpoint, write_model_config
from clearclip_d2.modeling.clip_loading import build_clip_model, resolve_architecture, supported_architectures
from clearclip_d2.utils.errors import ClearCLIPError


def test_checkpoint_weights_are_loaded(tiny_model_files, tiny_clip):
    model_json, checkpoint = tiny_model_files
    model, tokenizer, arch = build_clip_model(model_json, checkpoint)
    assert arch == "tiny-vit"
    expected, _ = tiny_clip
    for key, value in expected.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_torch_pickle_checkpoint_with_module_prefix(tmp_path, tiny_model_files, tiny_clip):
    model_json, _ = tiny_model_files
    expected, _ = tiny_clip
    path = str(tmp_path / "ddp.pt")
    torch.save({"state_dict": {"module." + k: v for k, v in expected.state_dict().items()}}, path)
    model, _, _ = build_clip_model(model_json, path)
    assert torch.equal(model.visual.proj, expected.visual.proj)


def test_random_weights_are_reproducible(tiny_model_files):
    model_json, _ = tiny_model_files
    a, _, _ = build_clip_model(model_json, "")
    b, _, _ = build_clip_model(model_json, "none")
    assert torch.equal(a.visual.proj, b.visual.proj)


def test_unknown_model_name_lists_valid_ones():
    with pytest.raises(ClearCLIPError) as info:
        resolve_architecture("ViT-Q-99")
    message = str(info.value)
    assert "ViT-Q-99" in message and "ViT-B-16" in message and "ViT-L-14" in message and "\n" not in message


def test_non_vit_model_is_refused():
    with pytest.raises(ClearCLIPError, match="not a plain open_clip ViT"):
        resolve_architecture("RN50")
    assert "RN50" not in supported_architectures() and "ViT-B-16" in supported_architectures()


def test_missing_model_config_file(tmp_path):
    with pytest.raises(ClearCLIPError, match="does not exist"):
        resolve_architecture(str(tmp_path / "nope.json"))


def test_bad_model_config_json(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(ClearCLIPError, match="cannot read model-config JSON"):
        resolve_architecture(str(path))


def test_unknown_pretrained_tag_lists_tags():
    with pytest.raises(ClearCLIPError) as info:
        build_clip_model("ViT-B-16", "no_such_tag")
    assert "openai" in str(info.value) and "laion2b_s34b_b88k" in str(info.value)


def test_missing_checkpoint_file(tiny_model_files, tmp_path):
    with pytest.raises(ClearCLIPError, match="does not exist"):
        build_clip_model(tiny_model_files[0], str(tmp_path / "weights.safetensors"))


def test_unreadable_checkpoint(tiny_model_files, tmp_path):
    path = tmp_path / "garbage.bin"
    path.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ClearCLIPError, match="garbage.bin"):
        build_clip_model(tiny_model_files[0], str(path))


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_pickle_with_code_is_refused(tiny_model_files, tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"visual.proj": Evil()}, f)
    with pytest.raises(ClearCLIPError, match="pickled Python objects"):
        build_clip_model(tiny_model_files[0], str(path))


def test_checkpoint_of_another_architecture_names_mismatches(tmp_path):
    wider = dict(TINY_VIT, vision_cfg=dict(TINY_VIT["vision_cfg"], width=128))
    other_json = write_model_config(tmp_path, "tiny-wide", wider)
    checkpoint = save_random_checkpoint(other_json, str(tmp_path / "wide.safetensors"))
    small_json = write_model_config(tmp_path, "tiny-small")
    with pytest.raises(ClearCLIPError) as info:
        build_clip_model(small_json, checkpoint)
    message = str(info.value)
    assert "does not fit" in message and "has shape" in message and "more" in message


def test_checkpoint_with_missing_keys(tmp_path, tiny_model_files, tiny_clip):
    expected, _ = tiny_clip
    state = dict(expected.state_dict())
    del state["visual.proj"]
    path = str(tmp_path / "partial.pt")
    torch.save(state, path)
    with pytest.raises(ClearCLIPError, match="missing visual.proj"):
        build_clip_model(tiny_model_files[0], path)


def test_openai_tag_without_internet_says_how_to_pass_a_file(monkeypatch):
    from clearclip_d2.modeling import clip_loading

    monkeypatch.setattr(clip_loading, "_host_resolves", lambda host: False)
    monkeypatch.setattr(clip_loading, "_cached_tag_file", lambda cfg, cache_dir: None)
    with pytest.raises(ClearCLIPError) as info:
        build_clip_model("ViT-B-16", "openai")
    message = str(info.value)
    assert "no internet" in message and "MODEL.CLEARCLIP.PRETRAINED" in message and "FORCE_QUICK_GELU" in message


def test_cached_tag_weights_get_quick_gelu(monkeypatch, tmp_path):
    """OpenAI weights were trained with QuickGELU: a tag that says so must switch it on."""
    from open_clip.transformer import QuickGELU

    from clearclip_d2.modeling import clip_loading

    calls = {}
    monkeypatch.setattr(clip_loading, "_download_tag", lambda arch, tag, cfg, cache: calls.setdefault("path", "ckpt"))
    monkeypatch.setattr(clip_loading, "load_checkpoint_strictly", lambda model, path: calls.setdefault("loaded", path))
    model, _, _ = build_clip_model("ViT-B-32", "openai")
    assert calls["loaded"] == "ckpt"
    assert isinstance(model.visual.transformer.resblocks[0].mlp.gelu, QuickGELU)
