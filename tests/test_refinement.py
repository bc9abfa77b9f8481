"""MODEL.CLEARCLIP.REFINE: PAMR and other models' masks, against explicit loops and end to end."""

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling import META_ARCH_REGISTRY, build_model
from detectron2.structures import Instances
from torch import nn

from conftest import tiny_cfg
from test_modeling_exactness import CLASSES, run_plugin, smooth_image

from clearclip_d2 import ClearCLIPError
from clearclip_d2.config import check_clearclip_config
from clearclip_d2.modeling.refinement.masks import (
    class_agnostic_masks,
    load_mask_model_config,
    model_zoo_config_dir,
    resolve_mask_model_config,
)
from clearclip_d2.modeling.refinement.masks import assign_pixels_to_masks, refine_with_masks
from clearclip_d2.modeling.inference.slide_inference import logits_to_probabilities
from clearclip_d2.modeling.refinement.pamr import pamr

ZOO_MASK_RCNN = "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml"


# --------------------------------------------------------------------------- independent loops
def clamp(value, size):
    return min(max(value, 0), size - 1)


def pamr_loops(probs, image, iterations, dilations):
    """PAMR written pixel by pixel from the paper's description (numpy, float64)."""
    probs, image = np.asarray(probs, np.float64), np.asarray(image, np.float64)
    channels, height, width = image.shape
    offsets = [(dy * d, dx * d) for d in dilations for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
    weights = np.zeros((len(offsets), height, width))
    for y in range(height):
        for x in range(width):
            std = []
            for c in range(channels):
                window = [
                    image[c, clamp(y + dy * d, height), clamp(x + dx * d, width)]
                    for d in dilations
                    for dy in (-1, 0, 1)
                    for dx in (-1, 0, 1)
                ]
                std.append(np.std(window, ddof=1))
            logits = []
            for oy, ox in offsets:
                ny, nx = clamp(y + oy, height), clamp(x + ox, width)
                terms = [-abs(image[c, y, x] - image[c, ny, nx]) / (0.1 * std[c] + 1e-8) for c in range(channels)]
                logits.append(np.mean(terms))
            logits = np.array(logits)
            exp = np.exp(logits - logits.max())
            weights[:, y, x] = exp / exp.sum()
    for _ in range(iterations):
        new = np.zeros_like(probs)
        for y in range(height):
            for x in range(width):
                for n, (oy, ox) in enumerate(offsets):
                    new[:, y, x] += weights[n, y, x] * probs[:, clamp(y + oy, height), clamp(x + ox, width)]
        probs = new
    return probs


def masks_loops(probs, masks, scores):
    """Highest-scoring covering mask per pixel, then the mean of each mask's pixels (numpy)."""
    probs, masks = np.asarray(probs, np.float64), np.asarray(masks)
    _, height, width = probs.shape
    owner = np.full((height, width), -1)
    for y in range(height):
        for x in range(width):
            for m in range(len(masks)):
                if masks[m, y, x] and (owner[y, x] < 0 or scores[m] > scores[owner[y, x]]):
                    owner[y, x] = m
    out = probs.copy()
    for m in range(len(masks)):
        pixels = [(y, x) for y in range(height) for x in range(width) if owner[y, x] == m]
        if pixels:
            mean = np.mean([probs[:, y, x] for y, x in pixels], axis=0)
            for y, x in pixels:
                out[:, y, x] = mean
    return out


def random_probs(num_classes, height, width, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(num_classes, height, width, generator=generator).mul(3).softmax(0)


# --------------------------------------------------------------------------- math
@pytest.mark.parametrize("iterations, dilations", [(1, (1,)), (3, (1, 2)), (2, (2, 5))])
def test_pamr_matches_pixel_loops(iterations, dilations):
    probs = random_probs(3, 9, 11, seed=0)
    image = torch.from_numpy(smooth_image(9, 11, seed=1).transpose(2, 0, 1).copy()).float()
    image[:, :, 7:] += 90  # a strong vertical edge the refinement must respect
    expected = pamr_loops(probs.numpy(), image.numpy(), iterations, dilations)
    refined = pamr(probs, image, iterations, dilations)
    assert torch.allclose(refined.double(), torch.from_numpy(expected), atol=1e-5), (refined.double() - torch.from_numpy(expected)).abs().max()
    assert not torch.allclose(refined, probs, atol=1e-3)
    # convex combinations: the class scores still sum to one
    assert torch.allclose(refined.sum(0), torch.ones(9, 11), atol=1e-5)


def test_pamr_does_not_depend_on_the_image_scale():
    probs = random_probs(4, 12, 10, seed=2)
    image = torch.from_numpy(smooth_image(12, 10, seed=3).transpose(2, 0, 1).copy()).float()
    normalised = (image - torch.tensor([122.8, 116.7, 104.1]).view(3, 1, 1)) / torch.tensor([68.5, 66.6, 70.3]).view(3, 1, 1)
    assert torch.allclose(pamr(probs, image, 3, (1, 2)), pamr(probs, normalised, 3, (1, 2)), atol=1e-5)


def test_masks_refinement_matches_pixel_loops():
    probs = random_probs(5, 7, 9, seed=4)
    generator = torch.Generator().manual_seed(5)
    masks = torch.rand(4, 7, 9, generator=generator) > 0.6
    masks[3] = False  # an empty mask
    masks[:, 0, 0] = False  # a pixel outside every mask
    scores = torch.tensor([0.6, 0.9, 0.6, 0.95])  # masks 0 and 2 tie: the lower index wins
    expected = torch.from_numpy(masks_loops(probs.numpy(), masks.numpy(), scores.tolist()))
    refined = refine_with_masks(probs, masks, scores)
    assert torch.allclose(refined.double(), expected, atol=1e-6)
    assert torch.equal(refined[:, 0, 0], probs[:, 0, 0])
    owner = assign_pixels_to_masks(masks, scores)
    both = masks[0] & masks[2] & ~masks[1]
    assert both.any() and bool((owner[both] == 0).all())


def test_no_masks_keep_the_probabilities():
    probs = random_probs(3, 4, 5, seed=6)
    refined = refine_with_masks(probs, torch.zeros(0, 4, 5, dtype=torch.bool), torch.zeros(0))
    assert torch.equal(refined, probs)


def test_class_agnostic_masks_from_detectron2_outputs():
    instances = Instances((4, 5))
    instances.pred_masks = torch.zeros(3, 4, 5, dtype=torch.bool)
    instances.pred_masks[0, :2] = True
    instances.scores = torch.tensor([0.9, 0.3, 0.7])
    masks, scores = class_agnostic_masks({"instances": instances}, 0.5)
    assert scores.tolist() == pytest.approx([0.9, 0.7]) and masks.shape == (2, 4, 5) and bool(masks[0, :2].all())

    segments = torch.tensor([[0, 1, 1, 2, 2]] * 4)
    info = [{"id": 1, "isthing": True, "score": 0.8}, {"id": 2, "isthing": False}]
    masks, scores = class_agnostic_masks({"panoptic_seg": (segments, info), "instances": instances}, 0.5)
    assert scores.tolist() == pytest.approx([0.8, 1.0])
    assert torch.equal(masks[1], segments == 2) and not bool((masks.any(0))[:, 0].any())

    sem_seg = torch.zeros(3, 4, 5)
    sem_seg[2, :, 3:] = 1
    masks, _ = class_agnostic_masks({"sem_seg": sem_seg}, 0.5)
    assert masks.shape == (2, 4, 5) and torch.equal(masks[1], sem_seg[2] > 0)

    boxes_only = Instances((4, 5))
    boxes_only.scores = torch.tensor([0.9])
    with pytest.raises(ClearCLIPError, match="without masks"):
        class_agnostic_masks({"instances": boxes_only}, 0.5)


# --------------------------------------------------------------------------- end to end
FIXED_MASK_SCORES = (0.8, 0.9, 0.4)


def fixed_masks(height, width):
    masks = torch.zeros(len(FIXED_MASK_SCORES), height, width, dtype=torch.bool)
    masks[0, :, : width // 2] = True
    masks[1, height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = True  # overlaps mask 0, scores higher
    masks[2, : height // 3, 2 * width // 3 :] = True  # below MASK_MIN_SCORE
    return masks


class FixedMasksModel(nn.Module):
    """A Detectron2 meta-architecture that returns fixed masks and records what it was given."""

    calls = []

    def __init__(self, cfg):
        super().__init__()
        self.register_buffer("anchor", torch.zeros(1))

    def forward(self, batched_inputs):
        outputs = []
        for x in batched_inputs:
            FixedMasksModel.calls.append(x)
            instances = Instances((x["height"], x["width"]))
            instances.pred_masks = fixed_masks(x["height"], x["width"])
            instances.scores = torch.tensor(FIXED_MASK_SCORES)
            outputs.append({"instances": instances})
        return outputs


if "FixedMasksModel" not in META_ARCH_REGISTRY:
    META_ARCH_REGISTRY.register(FixedMasksModel)


@pytest.fixture
def fixed_mask_config(tmp_path):
    path = tmp_path / "fixed_masks.yaml"
    path.write_text('MODEL:\n  META_ARCHITECTURE: "FixedMasksModel"\n  WEIGHTS: ""\nINPUT:\n  FORMAT: "BGR"\n  MIN_SIZE_TEST: 0\n')
    return str(path)


def segmentor(tiny_model_files, **overrides):
    model = build_model(tiny_cfg(tiny_model_files, **overrides)).eval()
    model.set_vocabulary(CLASSES)
    return model


def test_masks_refinement_end_to_end_with_a_detectron2_mask_model(tiny_model_files, fixed_mask_config):
    image = smooth_image(40, 52, seed=7)
    plain = run_plugin(segmentor(tiny_model_files), image, resize=False)
    FixedMasksModel.calls.clear()
    refined_model = segmentor(
        tiny_model_files,
        **{"MODEL.CLEARCLIP.REFINE": "masks", "MODEL.CLEARCLIP.MASK_MODEL_CONFIG": fixed_mask_config,
           "MODEL.CLEARCLIP.MASK_MODEL_WEIGHTS": "random", "MODEL.CLEARCLIP.MASK_MIN_SCORE": 0.5},
    )  # fmt: skip
    refined = run_plugin(refined_model, image, resize=False)

    (call,) = FixedMasksModel.calls
    assert (call["height"], call["width"]) == (40, 52)
    assert torch.equal(call["image"], torch.from_numpy(image[:, :, ::-1].transpose(2, 0, 1).copy()))  # its own BGR
    expected = masks_loops(plain.numpy(), fixed_masks(40, 52)[:2].numpy(), FIXED_MASK_SCORES[:2])
    assert torch.allclose(refined.double(), torch.from_numpy(expected), atol=1e-5)
    assert not torch.allclose(refined, plain, atol=1e-4)
    assert torch.equal(refined[:, :, -1], plain[:, :, -1])  # outside every used mask


def test_refinement_comes_before_the_background_threshold(tiny_model_files, fixed_mask_config):
    image = smooth_image(36, 44, seed=8)
    options = {"MODEL.CLEARCLIP.MASK_MODEL_CONFIG": fixed_mask_config, "MODEL.CLEARCLIP.MASK_MODEL_WEIGHTS": "random"}
    plain = run_plugin(segmentor(tiny_model_files), image, resize=False)
    threshold = float(plain.max(0).values.median())
    refined = run_plugin(
        segmentor(tiny_model_files, **{"MODEL.CLEARCLIP.REFINE": "masks", "MODEL.CLEARCLIP.PROB_THRESHOLD": threshold}, **options),
        image,
        resize=False,
    )
    expected = torch.from_numpy(masks_loops(plain.numpy(), fixed_masks(36, 44)[:2].numpy(), FIXED_MASK_SCORES[:2])).float()
    below = expected.max(0).values < threshold
    assert below.any() and (~below).any()
    expected[0] = torch.where(below, torch.full_like(expected[0], threshold), expected[0])
    assert torch.allclose(refined, expected, atol=1e-5)


def test_pamr_refinement_end_to_end(tiny_model_files):
    """REFINE pamr runs on the cosine logits of every query at the output size, before the
    softmax and the synonym max (the authors' placement), guided by the image resized to it."""
    image = smooth_image(48, 40, seed=9)
    resized = torch.from_numpy(image.transpose(2, 0, 1).copy())
    model = segmentor(
        tiny_model_files, **{"MODEL.CLEARCLIP.REFINE": "pamr", "MODEL.CLEARCLIP.PAMR_ITERATIONS": 3, "MODEL.CLEARCLIP.PAMR_DILATIONS": [1, 2]}
    )
    refined = model([{"image": resized, "height": 30, "width": 26}])[0]["sem_seg"]
    text = model.text_embeddings()
    logits = model.encode_images([model.preprocess_image(resized)], text=text)[0](text)
    logits = F.interpolate(logits[None], size=(30, 26), mode="bilinear", align_corners=False)[0]
    guide = F.interpolate(resized[None].float(), size=(30, 26), mode="bilinear", align_corners=False)[0]
    expected_logits = torch.from_numpy(pamr_loops(logits.numpy(), guide.numpy(), 3, (1, 2))).float()
    query_to_class = torch.as_tensor(model.vocabulary.query_to_class)
    expected = logits_to_probabilities(expected_logits, (30, 26), model.logit_scale, query_to_class, len(model.vocabulary), 0.0)
    assert len(model.vocabulary.queries) > len(model.vocabulary)  # synonyms: PAMR sees the queries
    assert torch.allclose(refined, expected, atol=1e-5)
    plain = segmentor(tiny_model_files)([{"image": resized, "height": 30, "width": 26}])[0]["sem_seg"]
    assert not torch.allclose(refined, plain, atol=1e-4)


def test_refinement_of_an_output_too_large_for_the_dense_map_is_refused(tiny_model_files):
    image = torch.from_numpy(smooth_image(48, 40, seed=9).transpose(2, 0, 1).copy())
    model = segmentor(tiny_model_files, **{"MODEL.CLEARCLIP.REFINE": "pamr", "MODEL.CLEARCLIP.MAX_DENSE_ELEMENTS": 100})
    with pytest.raises(ClearCLIPError, match="REFINE needs the whole probability map.*raise MAX_DENSE_ELEMENTS or set REFINE none"):
        model([{"image": image, "height": 30, "width": 26}])


def test_a_tiny_mask_rcnn_from_the_model_zoo_refines(tiny_model_files, tmp_path):
    """A real Detectron2 Mask R-CNN (model-zoo config, shrunk, random weights) as the mask model."""
    config = tmp_path / "tiny_mask_rcnn.yaml"
    config.write_text(
        f'_BASE_: "{os.path.join(model_zoo_config_dir(), ZOO_MASK_RCNN)}"\n'
        "MODEL:\n  WEIGHTS: ''\n  RESNETS: {DEPTH: 18, RES2_OUT_CHANNELS: 64}\n  FPN: {OUT_CHANNELS: 32}\n"
        "  RPN: {PRE_NMS_TOPK_TEST: 100, POST_NMS_TOPK_TEST: 20}\n"
        "  ROI_HEADS: {NUM_CLASSES: 2, SCORE_THRESH_TEST: 0.0}\n  ROI_BOX_HEAD: {FC_DIM: 64}\n  ROI_MASK_HEAD: {CONV_DIM: 32}\n"
        "INPUT: {MIN_SIZE_TEST: 64, MAX_SIZE_TEST: 128}\nTEST: {DETECTIONS_PER_IMAGE: 5}\n"
    )
    torch.manual_seed(0)
    model = segmentor(
        tiny_model_files,
        **{"MODEL.CLEARCLIP.REFINE": "masks", "MODEL.CLEARCLIP.MASK_MODEL_CONFIG": str(config),
           "MODEL.CLEARCLIP.MASK_MODEL_WEIGHTS": "random", "MODEL.CLEARCLIP.MASK_MIN_SCORE": 0.0},
    )  # fmt: skip
    assert type(model.refiner.model).__name__ == "GeneralizedRCNN"
    image = smooth_image(40, 60, seed=10)
    tensor = torch.from_numpy(image.transpose(2, 0, 1).copy())
    with torch.no_grad():
        masks, scores = model.refiner.predict_masks(tensor, (40, 60))
        refined = model([{"image": tensor, "height": 40, "width": 60}])[0]["sem_seg"]
        plain = segmentor(tiny_model_files)([{"image": tensor, "height": 40, "width": 60}])[0]["sem_seg"]
    assert masks.shape[1:] == (40, 60) and len(masks) == 5 and bool(masks.any())
    assert torch.allclose(refined, refine_with_masks(plain, masks, scores), atol=1e-6)


# --------------------------------------------------------------------------- configuration errors
def test_model_zoo_names_resolve_and_need_trained_weights():
    assert resolve_mask_model_config(ZOO_MASK_RCNN) == os.path.join(model_zoo_config_dir(), ZOO_MASK_RCNN)
    with pytest.raises(ClearCLIPError, match="no trained weights.*MASK_MODEL_WEIGHTS"):
        load_mask_model_config(ZOO_MASK_RCNN, "")
    cfg = load_mask_model_config(ZOO_MASK_RCNN, "random")
    assert cfg.MODEL.WEIGHTS == "" and cfg.MODEL.META_ARCHITECTURE == "GeneralizedRCNN"


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"MODEL.CLEARCLIP.REFINE": "crf"}, "REFINE 'crf' is not one of none, pamr, masks"),
        ({"MODEL.CLEARCLIP.REFINE": "pamr", "MODEL.CLEARCLIP.PAMR_DILATIONS": []}, "PAMR_DILATIONS"),
        ({"MODEL.CLEARCLIP.REFINE": "masks"}, "needs MODEL.CLEARCLIP.MASK_MODEL_CONFIG"),
        ({"MODEL.CLEARCLIP.REFINE": "masks", "MODEL.CLEARCLIP.MASK_MODEL_CONFIG": "/nonexistent/mask_rcnn.yaml"}, "/nonexistent/mask_rcnn.yaml does not exist"),
        ({"MODEL.CLEARCLIP.REFINE": "masks", "MODEL.CLEARCLIP.MASK_MODEL_CONFIG": ZOO_MASK_RCNN,
          "MODEL.CLEARCLIP.MASK_MODEL_WEIGHTS": "/nonexistent/model_final.pkl"}, "/nonexistent/model_final.pkl does not exist"),
        ({"MODEL.CLEARCLIP.REFINE": "masks", "MODEL.CLEARCLIP.MASK_MODEL_CONFIG": ZOO_MASK_RCNN,
          "MODEL.CLEARCLIP.MASK_MODEL_WEIGHTS": "random", "MODEL.CLEARCLIP.MASK_MIN_SCORE": 2.0}, "MASK_MIN_SCORE"),
    ],
)  # fmt: skip
def test_bad_refinement_settings_are_refused_before_building(tiny_model_files, overrides, fragment):
    cfg = tiny_cfg(tiny_model_files, **overrides)
    with pytest.raises(ClearCLIPError, match=fragment.replace(".", r"\.")):
        check_clearclip_config(cfg)
    with pytest.raises(ClearCLIPError, match=fragment.replace(".", r"\.")):
        build_model(cfg)


def test_unregistered_mask_model_architecture_is_named(tmp_path):
    path = tmp_path / "other.yaml"
    path.write_text('MODEL:\n  META_ARCHITECTURE: "NoSuchSegmentor"\n')
    with pytest.raises(ClearCLIPError, match="NoSuchSegmentor.*not registered"):
        load_mask_model_config(str(path), "random")
