"""Fast inference: the fast path equals the benchmark's reference-style path (one window at a
time, the last block twice, open_clip's blocks); fused attention in blocks 1..L-1; PRECISION checks."""

from functools import partial

import pytest
import torch
from detectron2.modeling import build_model

from conftest import tiny_cfg
from clearclip_d2.config import check_clearclip_config
from clearclip_d2.engine.benchmark import reference_style_forward
from clearclip_d2.modeling.clip.decomposition import TokenLayout, decomposed_block_forward, is_standard_block, qk_attention
from clearclip_d2.modeling.clip.dense_encoder import DenseCLIPEncoder
from clearclip_d2.utils.errors import ClearCLIPError

CLASSES = ["background", "cat, kitten", "dog", "grass, lawn", "sky"]


def build(tiny_model_files, **overrides):
    model = build_model(tiny_cfg(tiny_model_files, **overrides)).eval()
    model.set_vocabulary(CLASSES)
    return model


def images_of_sizes(sizes, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [{"image": torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=generator)} for h, w in sizes]


def probabilities(model, inputs, reference_style):
    forward = partial(reference_style_forward, model) if reference_style else model
    return [out["sem_seg"] for out in forward(inputs)]


# Sizes against a 96-pixel window with stride 48: several rows and columns, sides that are not
# multiples of the patch, and images smaller than the window in one or both directions.
SIZES = [(96, 160), (130, 97), (50, 70), (80, 200)]


@pytest.mark.parametrize("window_batch", [1, 3, 64])
def test_fast_path_equals_reference_style_path(tiny_model_files, window_batch):
    model = build(
        tiny_model_files,
        **{"MODEL.CLEARCLIP.SLIDE_CROP": 96, "MODEL.CLEARCLIP.SLIDE_STRIDE": 48, "MODEL.CLEARCLIP.WINDOW_BATCH": window_batch},
    )
    inputs = images_of_sizes(SIZES)  # several images of different sizes in one batch
    with torch.no_grad():
        fast = probabilities(model, inputs, reference_style=False)
        reference = probabilities(model, inputs, reference_style=True)
    for ours, theirs, (h, w) in zip(fast, reference, SIZES):
        assert ours.shape == (len(CLASSES), h, w)
        assert torch.allclose(ours, theirs, atol=1e-4, rtol=0), (ours - theirs).abs().max()


def test_fast_path_equals_reference_style_path_on_whole_images(tiny_model_files):
    model = build(tiny_model_files, **{"MODEL.CLEARCLIP.SLIDE_CROP": 0})
    inputs = images_of_sizes([(64, 96), (40, 33)], seed=1)
    with torch.no_grad():
        fast = probabilities(model, inputs, reference_style=False)
        reference = probabilities(model, inputs, reference_style=True)
    for ours, theirs in zip(fast, reference):
        assert torch.allclose(ours, theirs, atol=1e-4, rtol=0), (ours - theirs).abs().max()


def test_reference_style_path_runs_the_last_block_twice_one_window_at_a_time(tiny_model_files):
    """Guards the comparison above: the reference-style mode really is the slow way."""
    model = build(tiny_model_files, **{"MODEL.CLEARCLIP.SLIDE_CROP": 96, "MODEL.CLEARCLIP.SLIDE_STRIDE": 48})
    blocks = model.encoder.visual.transformer.resblocks
    calls = {"last": 0, "batches": []}

    def count_last(module, args):
        calls["last"] += 1

    def count_batches(module, args):
        calls["batches"].append(args[0].shape[0])

    handles = [blocks[-1].register_forward_pre_hook(count_last), model.encoder.visual.conv1.register_forward_pre_hook(count_batches)]
    inputs = images_of_sizes([(96, 160)])  # 3 windows
    try:
        with torch.no_grad():
            probabilities(model, inputs, reference_style=True)
            assert calls == {"last": 3, "batches": [1, 1, 1]}  # open_clip's full last block once per window
            calls.update(last=0, batches=[])
            probabilities(model, inputs, reference_style=False)
            assert calls == {"last": 0, "batches": [3]}  # one batch, last block only decomposed
    finally:
        for handle in handles:
            handle.remove()


def test_first_blocks_use_fused_attention_and_match_open_clip(tiny_clip):
    """open_clip's blocks run nn.MultiheadAttention, which on the CPU multiplies out the
    attention matrix; the plugin runs them through scaled_dot_product_attention instead."""
    model, _ = tiny_clip
    visual = model.visual
    encoder = DenseCLIPEncoder(visual)
    assert all(is_standard_block(block) for block in visual.transformer.resblocks)
    images = torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(5))
    calls = []
    original = torch.nn.functional.scaled_dot_product_attention

    def counting_sdpa(*args, **kwargs):
        calls.append(args[0].shape)
        return original(*args, **kwargs)

    with torch.no_grad():
        torch.nn.functional.scaled_dot_product_attention = counting_sdpa
        try:
            fused = encoder.forward_until_last_block(images)
        finally:
            torch.nn.functional.scaled_dot_product_attention = original
        unfused = encoder.forward_until_last_block(images, fused=False)
        block = visual.transformer.resblocks[0]
        x = encoder.embed(images)
        one_block = decomposed_block_forward(block, x, qk_attention, True, True, TokenLayout(6, 8))
    assert len(calls) == len(visual.transformer.resblocks) - 1
    assert torch.allclose(one_block, block(x), atol=1e-5)
    assert torch.allclose(fused, unfused, atol=1e-4), (fused - unfused).abs().max()


def test_precision_values_are_checked(tiny_model_files):
    cfg = tiny_cfg(tiny_model_files, **{"MODEL.CLEARCLIP.PRECISION": "fp64"})
    with pytest.raises(ClearCLIPError, match="PRECISION 'fp64'; valid values: fp32, fp16, bf16"):
        check_clearclip_config(cfg)
    cfg = tiny_cfg(tiny_model_files, **{"MODEL.CLEARCLIP.PRECISION": "fp16"})
    with pytest.raises(ClearCLIPError, match="fp16 needs a CUDA device"):
        check_clearclip_config(cfg)
    check_clearclip_config(tiny_cfg(tiny_model_files, **{"MODEL.CLEARCLIP.PRECISION": "bf16"}))


def test_bf16_on_cpu_runs_the_encoder_in_bf16_and_the_rest_in_fp32(tiny_model_files):
    model = build(tiny_model_files, **{"MODEL.CLEARCLIP.SLIDE_CROP": 96, "MODEL.CLEARCLIP.PRECISION": "bf16"})
    reference = build(tiny_model_files, **{"MODEL.CLEARCLIP.SLIDE_CROP": 96})
    dtypes = []
    hook = model.encoder.visual.transformer.resblocks[0].mlp.register_forward_hook(lambda m, a, out: dtypes.append(out.dtype))
    inputs = images_of_sizes([(96, 120)])
    with torch.no_grad():
        probs = model(inputs)[0]["sem_seg"]
        expected = reference(inputs)[0]["sem_seg"]
    hook.remove()
    assert dtypes == [torch.bfloat16]
    assert probs.dtype == torch.float32
    assert bool(torch.isfinite(probs).all()) and float(probs.min()) >= 0 and float(probs.max()) <= 1
    assert (probs.argmax(0) == expected.argmax(0)).float().mean() > 0.5


def test_fp16_on_cpu_is_refused_at_inference(tiny_model_files):
    model = build(tiny_model_files, **{"MODEL.CLEARCLIP.SLIDE_CROP": 96, "MODEL.CLEARCLIP.PRECISION": "fp16"})
    with pytest.raises(ClearCLIPError, match="fp16 needs a CUDA device"):
        model(images_of_sizes([(96, 96)]))
