"""Config keys of ClearCLIP (``MODEL.CLEARCLIP.*``) and the reference's input defaults.

This module imports nothing from ``modeling``: the defaults come from :mod:`.constants`, the
checks from :mod:`.checks` (which explains how the two checks that need the modeling code,
CLIP weights and the mask model, get here without an import).
"""

from typing import Sequence

from detectron2.config import CfgNode as CN

from . import checks, constants


def add_clearclip_config(cfg: CN) -> None:
    """Add ``MODEL.CLEARCLIP`` with the reference defaults to a Detectron2 config, in place."""
    cfg.MODEL.CLEARCLIP = CN()
    # open_clip architecture name ("ViT-B-16", "ViT-L-14", ...) or path of an open_clip model-config JSON.
    cfg.MODEL.CLEARCLIP.MODEL_NAME = "ViT-B-16"
    # open_clip pretrained tag ("openai", "laion2b_s34b_b88k", ...), a local checkpoint file
    # (.safetensors / .bin / .pt, read as tensors only), or "" for random weights.
    cfg.MODEL.CLEARCLIP.PRETRAINED = "openai"
    # Use QuickGELU even if the architecture's JSON says GELU (needed for OpenAI weights loaded
    # from a local file; tags set it themselves).
    cfg.MODEL.CLEARCLIP.FORCE_QUICK_GELU = False
    # Where open_clip caches downloaded weights ("" = the Hugging Face default cache).
    cfg.MODEL.CLEARCLIP.WEIGHTS_CACHE_DIR = ""
    # The paper's three switches, applied to the last vision block only:
    # attention variant ("qq" = ClearCLIP, "qk" = plain CLIP, "kk", "vv", "qq+kk" = SCLIP,
    # "identity" = MaskCLIP, "naclip" = NACLIP; see modeling/clip/decomposition.py),
    # keep the attention residual connection, keep the feed-forward network.
    cfg.MODEL.CLEARCLIP.ATTENTION = "qq"
    cfg.MODEL.CLEARCLIP.RESIDUAL = False
    cfg.MODEL.CLEARCLIP.FFN = False
    # Image encoder, a name of modeling/methods' ENCODER_REGISTRY: "decomposed" = CLIP's ViT with
    # the last block changed by the three switches above (ClearCLIP, CLIP, MaskCLIP, SCLIP, NACLIP);
    # other methods register their own encoder (see modeling/methods/__init__.py).
    cfg.MODEL.CLEARCLIP.ENCODER = "decomposed"
    # ProxyCLIP (ENCODER "proxyclip", docs/METHODS.md#proxyclip): the attention of CLIP's last block
    # comes from a vision foundation model (VFM), a timm ViT. MODEL_NAME: its timm name (DINO:
    # vit_{small,base}_patch{8,16}_224.dino; DINOv2: vit_{small,base,large}_patch14[_reg4]_dinov2.lvd142m).
    # PRETRAINED: "timm" = timm's own weights (downloaded by timm), a local file read as tensors
    # only (.safetensors, or a torch.save state dict in timm's key names), or "" = random (tests).
    # WINDOW_MULTIPLE: windows are padded (centred, zeros) to a multiple of this many pixels (the
    # authors' 56 for every VFM). BETA, GAMMA: the proxy similarities s become (s - mean(s) * BETA)
    # * GAMMA, the mean taken per window, and the negative ones are masked.
    cfg.MODEL.CLEARCLIP.PROXY = CN()
    cfg.MODEL.CLEARCLIP.PROXY.MODEL_NAME = constants.PROXY_MODEL_NAME
    cfg.MODEL.CLEARCLIP.PROXY.PRETRAINED = constants.PROXY_PRETRAINED_FROM_TIMM
    cfg.MODEL.CLEARCLIP.PROXY.WINDOW_MULTIPLE = constants.PROXY_WINDOW_MULTIPLE
    cfg.MODEL.CLEARCLIP.PROXY.BETA = constants.PROXY_BETA
    cfg.MODEL.CLEARCLIP.PROXY.GAMMA = constants.PROXY_GAMMA
    # Standard deviation (in patches) of NACLIP's Gaussian neighbourhood prior (ATTENTION "naclip" only).
    cfg.MODEL.CLEARCLIP.NACLIP_GAUSSIAN_STD = constants.NACLIP_GAUSSIAN_STD
    # SC-CLIP's encoder (ENCODER "sc_clip", modeling/methods/sc_clip.py; defaults: the authors' for
    # ViT-B/16; ViT-L/14: PRE 16, POST 6, MULTI 8..19, RES_CLS 0.1). Layer indices count the outputs
    # of blocks 1..L-1 from 0 (index i = block i + 1's output).
    cfg.MODEL.CLEARCLIP.SC_CLIP = CN()
    # Outlier-fixed tokens of this layer give the similarities that aggregate the tokens before
    # the last block and steer its attention.
    cfg.MODEL.CLEARCLIP.SC_CLIP.PRE_ADJUST_INDEX = constants.SC_CLIP_PRE_ADJUST_INDEX
    # Tokens of this layer (not fixed) give the similarities that aggregate the last block's output.
    cfg.MODEL.CLEARCLIP.SC_CLIP.POST_ADJUST_INDEX = constants.SC_CLIP_POST_ADJUST_INDEX
    # Multi-level fusion: the sum of the layers [START, END) goes through the last block's attention too.
    cfg.MODEL.CLEARCLIP.SC_CLIP.MULTI_START_INDEX = constants.SC_CLIP_MULTI_START_INDEX
    cfg.MODEL.CLEARCLIP.SC_CLIP.MULTI_END_INDEX = constants.SC_CLIP_MULTI_END_INDEX
    # Weight of the class token added back to the patch tokens after the last block's attention.
    cfg.MODEL.CLEARCLIP.SC_CLIP.RES_CLS = constants.SC_CLIP_RES_CLS
    # Cosine similarities below this are zeroed before they aggregate tokens.
    cfg.MODEL.CLEARCLIP.SC_CLIP.BETA = constants.SC_CLIP_BETA
    # The last block's similarity prior: (similarity - its mean) times this, negatives masked.
    cfg.MODEL.CLEARCLIP.SC_CLIP.ATTENTION_SHARPNESS = constants.SC_CLIP_ATTENTION_SHARPNESS
    # Local outlier factor of the last-but-one layer's patch tokens, per window: neighbours k
    # (windows need at least k + 1 patches) and the share of tokens called outliers.
    cfg.MODEL.CLEARCLIP.SC_CLIP.LOF_NEIGHBOURS = constants.SC_CLIP_LOF_NEIGHBOURS
    cfg.MODEL.CLEARCLIP.SC_CLIP.LOF_CONTAMINATION = constants.SC_CLIP_LOF_CONTAMINATION
    # ENCODER "resclip" (ResCLIP, CVPR 2025; modeling/methods/resclip.py). Its last block runs twice
    # with NACLIP's k-k attention and Gaussian prior, no residual, no FFN: a first pass segments each
    # window, whose segmentation then steers the second pass's attention. The first pass uses
    # LOGIT_SCALE and CLASS_CHUNK of the pipeline.
    cfg.MODEL.CLEARCLIP.RESCLIP = CN()
    # 0-based blocks whose q-k attention maps are averaged (residual cross-correlation, RCS);
    # each must come before the last block.
    cfg.MODEL.CLEARCLIP.RESCLIP.RCS_LAYERS = list(constants.RESCLIP_RCS_LAYERS)
    # (tau, lambda): last-block attention a = tau * ((1 - lambda) * a + lambda * RCS) after the softmax.
    cfg.MODEL.CLEARCLIP.RESCLIP.RCS_WEIGHTS = list(constants.RESCLIP_RCS_WEIGHTS)
    # (tau, lambda): logits a = tau * ((1 - lambda) * a + lambda * SFR) before the softmax, second pass.
    cfg.MODEL.CLEARCLIP.RESCLIP.SFR_WEIGHTS = list(constants.RESCLIP_SFR_WEIGHTS)
    # First-pass probability below which a pixel counts as query 0 (the authors' temp_thd).
    cfg.MODEL.CLEARCLIP.RESCLIP.FIRST_PASS_THRESHOLD = constants.RESCLIP_FIRST_PASS_THRESHOLD
    # Std (patches) of the Gaussian prior of the last block and of the feedback's 1-D blur.
    cfg.MODEL.CLEARCLIP.RESCLIP.GAUSSIAN_STD = constants.NACLIP_GAUSSIAN_STD
    # Decay the feedback between patches whose straight path leaves their class (delete_same_entity).
    cfg.MODEL.CLEARCLIP.RESCLIP.DELETE_SAME_ENTITY = True
    # PAMR of the first pass's logits on each window (0 iterations = off): iterations, dilations (pixels).
    cfg.MODEL.CLEARCLIP.RESCLIP.FIRST_PASS_PAMR_ITERATIONS = constants.RESCLIP_FIRST_PASS_PAMR_ITERATIONS
    cfg.MODEL.CLEARCLIP.RESCLIP.FIRST_PASS_PAMR_DILATIONS = list(constants.RESCLIP_FIRST_PASS_PAMR_DILATIONS)
    # Cosine similarities are multiplied by this before the softmax over queries.
    cfg.MODEL.CLEARCLIP.LOGIT_SCALE = constants.LOGIT_SCALE
    # Pixels whose highest class probability is below this are predicted as class 0 (background);
    # -1 = each test dataset's reference threshold (metadata "clearclip_prob_threshold", else 0).
    cfg.MODEL.CLEARCLIP.PROB_THRESHOLD = constants.PROB_THRESHOLD_FROM_DATASET
    # Sliding window size and step in pixels of the resized image; SLIDE_CROP 0 = whole image at once.
    cfg.MODEL.CLEARCLIP.SLIDE_CROP = constants.SLIDE_CROP
    cfg.MODEL.CLEARCLIP.SLIDE_STRIDE = constants.SLIDE_STRIDE
    # "centred": zero-pad each window to a multiple of the patch size (ClearCLIP); "none": encode it
    # unpadded, the patch embedding truncating it (SCLIP, NACLIP). See modeling/inference/slide_inference.py.
    cfg.MODEL.CLEARCLIP.WINDOW_PADDING = "centred"
    # Windows per image-encoder batch (bounds memory; results do not depend on it).
    cfg.MODEL.CLEARCLIP.WINDOW_BATCH = 8
    # Largest queries x max(output pixels, resized-image pixels) for which the model returns the
    # full probability map "sem_seg" [K, H, W]; larger ones (big images, big vocabularies, small
    # images upscaled to the 448 short side) go through the classes in chunks and return
    # "sem_seg_labels" [H, W] instead (same argmax). 0 = always chunked. Default 2**28 floats =
    # 1 GiB per copy; the plain path holds at most 5 copies (docs/LONG_EVALUATIONS.md, memory bound).
    cfg.MODEL.CLEARCLIP.MAX_DENSE_ELEMENTS = 2**28
    # Text queries per chunk on the chunked path: memory ~ CLASS_CHUNK x output pixels x 4 B
    # (the bound: docs/LONG_EVALUATIONS.md#memory-bounds; results do not depend on it).
    cfg.MODEL.CLEARCLIP.CLASS_CHUNK = 32
    # Expected SHA-256 (hex) of the PRETRAINED checkpoint file; a file with another hash is
    # refused ("" = not checked).
    cfg.MODEL.CLEARCLIP.PRETRAINED_SHA256 = ""
    # Detectron2 weights (MODEL.WEIGHTS, MASK_MODEL_WEIGHTS) are read as tensors only; a
    # Detectron2 .pkl file (model zoo) is a Python pickle that can run code when read, and is
    # loaded only with True here (only for files from a source you trust).
    cfg.MODEL.CLEARCLIP.TRUST_PICKLED_WEIGHTS = False
    # Folder of the text-embedding cache, one file per (model, weights, templates, queries);
    # "" = no disk cache (embeddings kept in memory only). See modeling/clip/text_cache.py.
    cfg.MODEL.CLEARCLIP.CACHE_DIR = constants.default_text_cache_dir()
    # Precision: "fp32", "fp16" (CUDA only) or "bf16", the half precisions through torch.autocast on
    # the image encoder; or "fp16_weights" (CUDA only), the authors' numerics: the whole CLIP model
    # (image and text towers) in fp16 weights, LayerNorm in fp32, as open_clip's precision="fp16"
    # and OpenAI's clip.load on CUDA. Similarities, upsampling and softmax stay fp32 in every case.
    # See modeling/clip/precision.py.
    cfg.MODEL.CLEARCLIP.PRECISION = "fp32"
    # Prompts per text-encoder batch when embedding the vocabulary.
    cfg.MODEL.CLEARCLIP.TEXT_BATCH_SIZE = 256
    # Prompt templates, "{}" stands for the class name (default: the 80 OpenAI ImageNet templates).
    cfg.MODEL.CLEARCLIP.PROMPT_TEMPLATES = constants.openai_imagenet_templates()
    # "" = the test dataset's stuff_classes; else a file with one class a line,
    # comma-separated synonyms ("sky, clouds"); "resources:<name>" = a shipped list,
    # clearclip_d2/resources/class_names/<name>.txt (e.g. "resources:sclip/voc21", the authors'
    # renamed lists of SCLIP, NACLIP and their successors).
    cfg.MODEL.CLEARCLIP.CLASS_NAMES_FILE = ""
    # Refinement at the output size: "none" (the reference); "pamr" (pixel-adaptive mask
    # refinement) of the cosine logits of every query, before the logit scale, the softmax and
    # the synonym max (where SCLIP's and NACLIP's authors run it), sliding or whole image; or
    # "masks" (average inside the masks of another Detectron2 model) of the per-class
    # probabilities, before the area and background thresholds.
    cfg.MODEL.CLEARCLIP.REFINE = "none"
    # PAMR: iterations, and dilations (pixels of the output) of its 3x3 neighbourhoods.
    cfg.MODEL.CLEARCLIP.PAMR_ITERATIONS = constants.PAMR_DEFAULT_ITERATIONS
    cfg.MODEL.CLEARCLIP.PAMR_DILATIONS = list(constants.PAMR_DEFAULT_DILATIONS)
    # "masks": the mask model's Detectron2 config (YAML file or model-zoo name such as
    # "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml") and weights (file or URL;
    # "" = its config's MODEL.WEIGHTS; "random" = untrained, for tests).
    cfg.MODEL.CLEARCLIP.MASK_MODEL_CONFIG = ""
    cfg.MODEL.CLEARCLIP.MASK_MODEL_WEIGHTS = ""
    # "package.module:function" that adds another project's config keys to the mask model's
    # config (and registers its models on import), e.g. "mask2former:add_maskformer2_config".
    cfg.MODEL.CLEARCLIP.MASK_MODEL_ADD_CONFIG = ""
    # Masks scored below this are not used.
    cfg.MODEL.CLEARCLIP.MASK_MIN_SCORE = 0.5
    # --- Post-processing of the training-free methods (SCLIP, NACLIP, ...; docs/METHODS.md) ---
    # SCLIP's area_thd: after the synonym max, every class but 0 whose argmax area is not above
    # this fraction of the non-background argmax area gets probability 0 (not renormalised),
    # before the background threshold. 0 = off.
    cfg.MODEL.CLEARCLIP.AREA_THRESHOLD = 0.0
    # Divide the per-class probabilities (after the synonym max) by their sum over classes, as
    # NACLIP and ResCLIP do. The background threshold still compares the highest probability
    # BEFORE this (as they do); argmax unchanged. See modeling/inference/slide_inference.py.
    cfg.MODEL.CLEARCLIP.RENORMALIZE = False
    # Whole-image mode (SLIDE_CROP 0): "direct" = patch-grid logits bilinearly to the output size
    # (ClearCLIP, SCLIP); "via_input" = to the resized input, then to the output size (NACLIP, ResCLIP).
    cfg.MODEL.CLEARCLIP.WHOLE_IMAGE_UPSAMPLE = "direct"
    # Backbone (build_clearclip_backbone): L2-normalise each patch feature, as ClearCLIP's classifier does.
    cfg.MODEL.CLEARCLIP.BACKBONE_L2_NORMALIZE = True

    # The reference's input: RGB, CLIP normalisation on 0-255 values,
    # short side resized to 448 with the long side at most 2048 (bilinear).
    cfg.INPUT.FORMAT = "RGB"
    cfg.MODEL.PIXEL_MEAN = list(constants.CLIP_PIXEL_MEAN)
    cfg.MODEL.PIXEL_STD = list(constants.CLIP_PIXEL_STD)
    cfg.INPUT.MIN_SIZE_TEST = constants.RESIZE_SHORT_EDGE
    cfg.INPUT.MAX_SIZE_TEST = constants.RESIZE_MAX_LONG_EDGE


def load_clearclip_config(config_file: str, opts: Sequence[str] = ()) -> CN:
    """Detectron2's default config with the ClearCLIP keys, merged from ``config_file`` and the
    ``KEY VALUE`` overrides ``opts`` (not frozen, not checked: see :func:`check_clearclip_config`).

    A missing file (or ``_BASE_`` file), a YAML syntax error, an unknown key or a bad value
    raises :class:`ClearCLIPError` in one line. The YAML is read with ``yaml.safe_load`` only
    (Detectron2's ``merge_from_file`` falls back to ``yaml.unsafe_load``, which can run code). An
    integer given for a float key (``PROB_THRESHOLD 0``) is taken as that float, which yacs refuses.
    """
    from detectron2.config import get_cfg

    from .utils.errors import ClearCLIPError

    cfg = get_cfg()
    add_clearclip_config(cfg)
    loaded = _read_config_file(cfg, config_file)
    try:
        if loaded.get("VERSION", cfg.VERSION) == cfg.VERSION:
            cfg.merge_from_other_cfg(type(cfg)(_ints_as_floats(loaded, cfg)))
        else:  # an older Detectron2 config version: Detectron2 upgrades it
            cfg.merge_from_file(config_file, allow_unsafe=False)
    except (KeyError, ValueError, AssertionError, TypeError) as e:
        raise ClearCLIPError(f"bad config file {config_file}: {e}") from e
    if len(opts) % 2:
        raise ClearCLIPError(f"config overrides need KEY VALUE pairs, got an odd number of items: {' '.join(opts)}")
    try:
        cfg.merge_from_list(_override_ints_as_floats(list(opts), cfg))
    except (KeyError, ValueError, AssertionError, TypeError) as e:
        raise ClearCLIPError(f"bad config override ({' '.join(map(str, opts))}): {e}") from e
    return cfg


def _read_config_file(cfg: CN, config_file: str) -> dict:
    """The YAML of ``config_file`` merged over its ``_BASE_`` files (Detectron2's
    ``load_yaml_with_base``, safe loading only), with one-line errors naming the file at fault."""
    import os

    import yaml

    from .utils.errors import ClearCLIPError

    if not os.path.isfile(config_file):
        raise ClearCLIPError(f"config file {config_file} does not exist")
    try:
        return cfg.load_yaml_with_base(config_file, allow_unsafe=False) or {}
    except FileNotFoundError as e:
        raise ClearCLIPError(
            f"the _BASE_ file of {config_file} does not exist: looked for {e.filename} (a _BASE_ path is relative "
            f"to the folder of the file naming it); copy the base file there or write its full path in _BASE_"
        ) from e
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{mark.name}, line {mark.line + 1}, column {mark.column + 1}" if mark is not None else config_file
        problem = getattr(e, "problem", None) or type(e).__name__
        raise ClearCLIPError(f"config file {config_file} is not valid YAML: {problem} ({where}); fix the syntax there") from e


def _ints_as_floats(loaded, defaults):
    """``loaded`` (a config dict) with every integer whose default in ``defaults`` is a float
    turned into that float: the one place where ``PROB_THRESHOLD: 0`` means 0.0."""
    if isinstance(loaded, dict) and hasattr(defaults, "items"):
        return {key: _ints_as_floats(value, defaults.get(key)) for key, value in loaded.items()}
    if isinstance(defaults, float) and isinstance(loaded, int) and not isinstance(loaded, bool):
        return float(loaded)
    return loaded


def _override_ints_as_floats(opts: list, cfg: CN) -> list:
    """``KEY VALUE`` overrides with :func:`_ints_as_floats` applied to each value."""
    from ast import literal_eval

    result = list(opts)
    for index in range(0, len(result), 2):
        default = cfg
        for part in str(result[index]).split("."):
            default = default.get(part) if hasattr(default, "get") else None
        value = result[index + 1]
        if isinstance(value, str):
            try:
                value = literal_eval(value)
            except (ValueError, SyntaxError):
                continue
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            result[index + 1] = repr(float(value)) if isinstance(result[index + 1], str) else float(value)
    return result


def check_clearclip_config(cfg: CN) -> None:
    """Validate the ClearCLIP keys without building the model (no weights are read).

    Raises :class:`~clearclip_d2.utils.errors.ClearCLIPError` with the key and the fix. The
    CLIP weights and the ``REFINE masks`` mask model are checked by the modeling modules'
    registered checks (:func:`~clearclip_d2.checks.register_config_check`).
    """
    from .data.vocabulary import load_vocabulary_file

    cc = cfg.MODEL.CLEARCLIP
    checks.check_window_padding(cc.WINDOW_PADDING)
    checks.check_attention(cc.ATTENTION, cc.NACLIP_GAUSSIAN_STD)
    checks.check_templates(cc.PROMPT_TEMPLATES)
    checks.check_text_batch_size(cc.TEXT_BATCH_SIZE)
    checks.check_num_workers(cfg.DATALOADER.NUM_WORKERS)
    checks.check_precision(cc.PRECISION, cfg.MODEL.DEVICE)
    if cc.CLASS_NAMES_FILE:
        load_vocabulary_file(cc.CLASS_NAMES_FILE)
    checks.check_prob_threshold(cc.PROB_THRESHOLD)
    checks.check_sliding_window(cc.SLIDE_CROP, cc.SLIDE_STRIDE, cc.WINDOW_BATCH)
    checks.check_class_chunking(cc.CLASS_CHUNK, cc.MAX_DENSE_ELEMENTS)
    checks.check_input_format(cfg.INPUT.FORMAT)
    checks.check_pixel_normalisation(cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD)
    checks.check_refine(cc.REFINE, cc.PAMR_ITERATIONS, cc.PAMR_DILATIONS)
    checks.check_area_threshold(cc.AREA_THRESHOLD)
    checks.check_whole_image_upsample(cc.WHOLE_IMAGE_UPSAMPLE)
    checks.run_registered_config_checks(cfg)
