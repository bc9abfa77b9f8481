"""Building the CLIP model: names, checkpoints, and the errors for bad values."""

import os
import pickle

import pytest
import torch

from conftest import TINY_VIT, save_random_checkpoint, write_model_config
from clearclip_d2.modeling.clip.loading import build_clip_model, resolve_architecture, supported_architectures
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
    from clearclip_d2.modeling.clip import loading as clip_loading

    monkeypatch.setattr(clip_loading, "_host_resolves", lambda host: False)
    monkeypatch.setattr(clip_loading, "_cached_tag_file", lambda cfg, cache_dir: None)
    with pytest.raises(ClearCLIPError) as info:
        build_clip_model("ViT-B-16", "openai")
    message = str(info.value)
    assert "no internet" in message and "MODEL.CLEARCLIP.PRETRAINED" in message and "FORCE_QUICK_GELU" in message


def test_cached_tag_weights_get_quick_gelu(monkeypatch, tmp_path):
    """OpenAI weights were trained with QuickGELU: a tag that says so must switch it on."""
    from open_clip.transformer import QuickGELU

    from clearclip_d2.modeling.clip import loading as clip_loading

    calls = {}
    monkeypatch.setattr(clip_loading, "_download_tag", lambda arch, tag, cfg, cache: calls.setdefault("path", "ckpt"))
    monkeypatch.setattr(clip_loading, "load_checkpoint_strictly", lambda model, path: calls.setdefault("loaded", path))
    model, _, _ = build_clip_model("ViT-B-32", "openai")
    assert calls["loaded"] == "ckpt"
    assert isinstance(model.visual.transformer.resblocks[0].mlp.gelu, QuickGELU)


# ----------------------------------------------------------------------------- tampered checkpoints
def tampered_copy(source, path, edit):
    data = bytearray(open(source, "rb").read())
    with open(path, "wb") as f:
        f.write(edit(data))
    return str(path)


@pytest.mark.parametrize(
    "suffix, edit, fragment",
    [
        (".safetensors", lambda data: data[: len(data) // 2], "refusing checkpoint"),
        (".safetensors", lambda data: data[:4] + b"\xff" * 4 + data[8:], "refusing checkpoint"),  # header length
        (".pt", lambda data: data[: len(data) * 3 // 4], "refusing checkpoint"),
    ],
    ids=["truncated-safetensors", "corrupt-header", "truncated-torch-zip"],
)
def test_truncated_or_corrupt_checkpoint_is_refused(tmp_path, tiny_model_files, tiny_clip, suffix, edit, fragment):
    model_json, checkpoint = tiny_model_files
    source = checkpoint
    if suffix == ".pt":
        source = str(tmp_path / "full.pt")
        torch.save(tiny_clip[0].state_dict(), source)
    path = tampered_copy(source, tmp_path / f"tampered{suffix}", edit)
    with pytest.raises(ClearCLIPError) as info:
        build_clip_model(model_json, path)
    assert fragment in str(info.value) and path in str(info.value) and "\n" not in str(info.value)


def test_checkpoint_with_wrong_dtype_or_nan_is_refused(tmp_path, tiny_model_files, tiny_clip):
    expected, _ = tiny_clip
    model_json = tiny_model_files[0]
    ints = dict(expected.state_dict(), **{"visual.proj": expected.visual.proj.long()})
    torch.save(ints, str(tmp_path / "ints.pt"))
    with pytest.raises(ClearCLIPError, match=r"visual.proj has dtype torch.int64, expected floating point.*damaged"):
        build_clip_model(model_json, str(tmp_path / "ints.pt"))
    nan = expected.visual.proj.clone()
    nan[0, 0] = float("nan")
    torch.save(dict(expected.state_dict(), **{"visual.proj": nan}), str(tmp_path / "nan.pt"))
    with pytest.raises(ClearCLIPError, match="visual.proj holds NaN or Inf"):
        build_clip_model(model_json, str(tmp_path / "nan.pt"))
    # Half-precision weights are legitimate (cast to fp32 on loading).
    half = {k: v.half() if v.is_floating_point() else v for k, v in expected.state_dict().items()}
    torch.save(half, str(tmp_path / "half.pt"))
    model, _, _ = build_clip_model(model_json, str(tmp_path / "half.pt"))
    assert model.visual.proj.dtype == torch.float32


def test_checkpoint_hash_is_checked(tmp_path, tiny_model_files):
    import hashlib

    model_json, checkpoint = tiny_model_files
    digest = hashlib.sha256(open(checkpoint, "rb").read()).hexdigest()
    build_clip_model(model_json, checkpoint, expected_sha256=digest.upper())
    # One byte of a tensor changed: the file still loads, only the hash tells.
    path = tampered_copy(checkpoint, tmp_path / "flipped.safetensors", lambda data: data[:-5] + bytes([data[-5] ^ 1]) + data[-4:])
    build_clip_model(model_json, path)
    with pytest.raises(ClearCLIPError) as info:
        build_clip_model(model_json, path, expected_sha256=digest)
    assert "SHA-256" in str(info.value) and digest in str(info.value) and "PRETRAINED_SHA256" in str(info.value)


def test_checkpoint_goes_through_open_clips_conversion(monkeypatch, tmp_path, tiny_model_files, tiny_clip):
    """Third-party formats are open_clip's to convert: the tensors read go through its
    convert_state_dict before they are checked and loaded."""
    from clearclip_d2.modeling.clip import loading as clip_loading

    expected, _ = tiny_clip
    path = str(tmp_path / "foreign.pt")
    torch.save({"foreign." + k: v for k, v in expected.state_dict().items()}, path)
    with pytest.raises(ClearCLIPError, match="does not fit the architecture: missing"):
        build_clip_model(tiny_model_files[0], path)
    monkeypatch.setattr(
        clip_loading, "convert_state_dict", lambda model, state: {k[len("foreign."):]: v for k, v in state.items()}
    )
    model, _, _ = build_clip_model(tiny_model_files[0], path)
    assert torch.equal(model.visual.proj, expected.visual.proj)
