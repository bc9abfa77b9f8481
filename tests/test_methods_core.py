"""The shared machinery of the method family: the encoder registry, unpadded windows, and
encoders that see the text embeddings."""

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model

from conftest import tiny_cfg
from clearclip_d2.modeling.methods import ENCODER_REGISTRY, build_dense_encoder, encoder_names
from clearclip_d2.modeling.inference.slide_inference import encode_windows
from clearclip_d2.utils.errors import ClearCLIPError

CLASSES = ["background", "cat, kitten", "grass", "sky"]


def segment(model, height, width, seed=0):
    rng = np.random.default_rng(seed)
    image = torch.from_numpy(rng.integers(0, 256, (3, height, width), dtype=np.uint8))
    return model([{"image": image}])[0]["sem_seg"]


def build(tiny_model_files, **overrides):
    model = build_model(tiny_cfg(tiny_model_files, **overrides)).eval()
    model.set_vocabulary(CLASSES)
    return model


def test_decomposed_is_registered_and_default(tiny_model_files):
    assert "decomposed" in encoder_names()
    model = build(tiny_model_files)
    assert model.encoder.uses_text is False and model.encoder.window_multiple == model.encoder.patch_size


def test_unknown_encoder_is_one_line(tiny_model_files):
    cfg = tiny_cfg(tiny_model_files, **{"MODEL.CLEARCLIP.ENCODER": "nope"})
    with pytest.raises(ClearCLIPError, match="MODEL.CLEARCLIP.ENCODER 'nope'.*decomposed"):
        build_dense_encoder(cfg, None)


def test_unknown_window_padding_is_one_line(tiny_model_files):
    with pytest.raises(ClearCLIPError, match="WINDOW_PADDING 'left'.*centred, none"):
        build(tiny_model_files, **{"MODEL.CLEARCLIP.WINDOW_PADDING": "left"})


def test_unpadded_windows_truncate_to_whole_patches():
    """WINDOW_PADDING none: a 40 x 50 window is encoded as it is; the encoder sees 40 x 50 and
    returns the 2 x 3 grid of whole 16-pixel patches; no padding is recorded."""
    seen = []

    def encode(crops):
        seen.append(tuple(crops.shape[-2:]))
        return torch.ones(crops.shape[0], (crops.shape[-2] // 16) * (crops.shape[-1] // 16), 4)

    image = torch.zeros(3, 40, 50)
    padded = encode_windows([image], encode, 16, 64, 32, 4)
    unpadded = encode_windows([image], encode, 16, 64, 32, 4, pad=False)
    assert seen == [(48, 64), (40, 50)]
    assert padded[0].grid == (3, 4) and padded[0].padding == (7, 7, 4, 4)
    assert unpadded[0].grid == (2, 3) and unpadded[0].padding == (0, 0, 0, 0)


def test_padding_modes_agree_on_whole_patches_and_differ_otherwise(tiny_model_files):
    centred = build(tiny_model_files, **{"MODEL.CLEARCLIP.SLIDE_CROP": 64, "MODEL.CLEARCLIP.SLIDE_STRIDE": 32})
    unpadded = build(
        tiny_model_files,
        **{"MODEL.CLEARCLIP.SLIDE_CROP": 64, "MODEL.CLEARCLIP.SLIDE_STRIDE": 32, "MODEL.CLEARCLIP.WINDOW_PADDING": "none"},
    )
    # 96 x 128: every window is 64 x 64, a multiple of the patch: nothing to pad or truncate.
    assert torch.allclose(segment(centred, 96, 128), segment(unpadded, 96, 128), atol=1e-6)
    # 50 x 70: windows of 50 x 64 are padded by one mode, truncated by the other.
    assert not torch.allclose(segment(centred, 50, 70), segment(unpadded, 50, 70), atol=1e-3)


class TextAwareEncoder(torch.nn.Module):
    """The decomposed encoder, recording the text embeddings it is given."""

    uses_text = True

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.patch_size, self.window_multiple = inner.patch_size, inner.window_multiple
        self.texts = []

    def forward(self, images, text_embeddings=None):
        self.texts.append(text_embeddings)
        return self.inner(images)


def test_text_aware_encoders_get_the_whole_vocabulary(tiny_model_files):
    name = "test_text_aware"
    if name not in ENCODER_REGISTRY:

        def test_text_aware(cfg, clip_model):
            return TextAwareEncoder(ENCODER_REGISTRY.get("decomposed")(cfg, clip_model))

        ENCODER_REGISTRY.register(test_text_aware)
    plain = build(tiny_model_files, **{"MODEL.CLEARCLIP.SLIDE_CROP": 64, "MODEL.CLEARCLIP.SLIDE_STRIDE": 48})
    aware = build(
        tiny_model_files,
        **{"MODEL.CLEARCLIP.SLIDE_CROP": 64, "MODEL.CLEARCLIP.SLIDE_STRIDE": 48, "MODEL.CLEARCLIP.ENCODER": name},
    )
    assert torch.allclose(segment(plain, 80, 100), segment(aware, 80, 100), atol=1e-6)
    assert aware.encoder.texts and all(t is not None and t.shape[0] == 5 for t in aware.encoder.texts)


# --------------------------------------------------------------------------- shared pipeline keys
@pytest.mark.parametrize(
    "overrides,fragment",
    [
        ({"MODEL.CLEARCLIP.AREA_THRESHOLD": 1.5}, r"AREA_THRESHOLD 1.5 must be in \[0, 1\)"),
        ({"MODEL.CLEARCLIP.WHOLE_IMAGE_UPSAMPLE": "twice"}, "WHOLE_IMAGE_UPSAMPLE 'twice'.*direct, via_input"),
        ({"MODEL.CLEARCLIP.PRECISION": "fp16_weights"}, "PRECISION fp16_weights needs a CUDA device"),
        ({"MODEL.CLEARCLIP.CLASS_NAMES_FILE": "resources:sclip/nope"}, "no shipped class list 'resources:sclip/nope'.*resources:sclip/voc21"),
    ],
)
def test_bad_pipeline_keys_are_one_line(tiny_model_files, overrides, fragment):
    from clearclip_d2.config import check_clearclip_config

    with pytest.raises(ClearCLIPError, match=fragment):
        check_clearclip_config(tiny_cfg(tiny_model_files, **overrides))


def test_shipped_renamed_lists_load_with_their_repeated_name():
    """SCLIP's COCO-Object list names "bed" among the background queries and as a class."""
    from clearclip_d2.data.vocabulary import load_vocabulary_file

    vocabulary = load_vocabulary_file("resources:sclip/coco_object")
    assert len(vocabulary) == 81 and vocabulary.queries.count("bed") == 2
    assert len(load_vocabulary_file("resources:sclip/voc21").classes[0]) == 26


def test_fp16_weights_build_the_authors_numerics(tiny_model_files):
    """fp16 weights, LayerNorm computed in fp32 (open_clip's precision "fp16"); running it is CUDA only."""
    from open_clip.transformer import LayerNormFp32

    from clearclip_d2.modeling.clip.loading import build_clip_model

    model, _, _ = build_clip_model(*tiny_model_files, precision="fp16_weights")
    assert model.visual.conv1.weight.dtype == torch.float16 and model.visual.proj.dtype == torch.float16
    assert isinstance(model.visual.ln_post, LayerNormFp32) and model.visual.ln_post.weight.dtype == torch.float32


def test_chunked_path_renormalises_exactly_and_refuses_the_area_threshold(tiny_model_files):
    """RENORMALIZE keeps the argmax, so the class-chunked labels equal the dense argmax (threshold
    included); AREA_THRESHOLD needs every class at once and is refused there in one line."""
    options = {"MODEL.CLEARCLIP.SLIDE_CROP": 64, "MODEL.CLEARCLIP.SLIDE_STRIDE": 48, "MODEL.CLEARCLIP.RENORMALIZE": True}
    dense = build(tiny_model_files, **options)
    probs = segment(dense, 70, 90)
    threshold = float(probs.max(0).values.median())
    dense.prob_threshold = threshold
    probs = segment(dense, 70, 90)
    chunked = build(tiny_model_files, **options, **{"MODEL.CLEARCLIP.MAX_DENSE_ELEMENTS": 0, "MODEL.CLEARCLIP.CLASS_CHUNK": 2})
    chunked.prob_threshold = threshold
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.integers(0, 256, (3, 70, 90), dtype=np.uint8))
    labels = chunked([{"image": image}])[0]["sem_seg_labels"]
    assert torch.equal(labels, probs.argmax(0)) and (labels == 0).any()
    area = build(tiny_model_files, **{"MODEL.CLEARCLIP.MAX_DENSE_ELEMENTS": 0, "MODEL.CLEARCLIP.AREA_THRESHOLD": 0.1})
    with pytest.raises(ClearCLIPError, match="AREA_THRESHOLD needs the whole probability map.*set AREA_THRESHOLD 0"):
        segment(area, 40, 50)
