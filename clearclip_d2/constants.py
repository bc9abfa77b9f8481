"""The reference algorithm's constants, in one place.

Values follow the authors' released ClearCLIP code (docs/DESIGN.md#reference-settings):
configs and code read them from here instead of repeating the numbers.
"""

import os

# The package version (setup.py reads it here; clearclip_d2.__version__ is this).
__version__ = "0.1.0"

RESOURCE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "resources")
CLASS_NAMES_DIR = os.path.join(RESOURCE_DIR, "class_names")

# CLIP's normalisation on 0-255 RGB values.
CLIP_PIXEL_MEAN = (122.771, 116.746, 104.094)
CLIP_PIXEL_STD = (68.501, 66.632, 70.323)

LOGIT_SCALE = 50.0
SLIDE_CROP = 448
SLIDE_STRIDE = 224
# Test-time resize: short side to 448, long side at most 2048 (mmseg ``Resize(scale=(2048, 448))``).
RESIZE_SHORT_EDGE = 448
RESIZE_MAX_LONG_EDGE = 2048

# Offset added to the target patch grid before the bicubic positional-embedding
# interpolation (the DINO-style trick the reference uses; it changes the sampling grid).
POS_EMBED_INTERP_OFFSET = 0.1

# NACLIP (Hajimiri et al., WACV 2025): standard deviation, in patches, of the Gaussian
# neighbourhood prior added to the k-k attention logits (``gaussian_std=5`` in the authors' code).
NACLIP_GAUSSIAN_STD = 5.0

# ProxyCLIP (Lan et al., ECCV 2024; MODEL.CLEARCLIP.PROXY.*): the authors' vision foundation model
# (DINO ViT-B/8, here timm's copy of its weights), their adaptive normalisation of the proxy
# similarities, (s - mean(s) * beta) * gamma, and the multiple every window is padded to
# (56 = lcm(8, 14), the patches of DINO /8 and DINOv2 /14, hard-coded in their forward_slide).
PROXY_MODEL_NAME = "vit_base_patch8_224.dino"
# MODEL.CLEARCLIP.PROXY.PRETRAINED value for "timm's own pretrained weights" (downloaded by timm).
PROXY_PRETRAINED_FROM_TIMM = "timm"
PROXY_BETA = 1.2
PROXY_GAMMA = 3.0
PROXY_WINDOW_MULTIPLE = 56

# MODEL.CLEARCLIP.ATTENTION names of the last block's attention variants (the functions are
# ``modeling/clip/decomposition.py``'s ATTENTION_VARIANTS, keyed by these names).
ATTENTION_VARIANT_NAMES = ("qk", "qq", "kk", "vv", "qq+kk", "identity", "naclip")

# MODEL.CLEARCLIP.PRECISION names of the image encoder's precisions (dtypes: ``modeling/clip/precision.py``).
# "fp16_weights" is the authors' numerics (SCLIP, NACLIP, ...): the whole CLIP model in fp16
# weights, as open_clip's precision="fp16" or OpenAI's clip.load on CUDA.
PRECISION_NAMES = ("fp32", "fp16", "bf16", "fp16_weights")

# Channel orders (INPUT.FORMAT) ClearCLIP and the mask models of REFINE masks can take.
INPUT_FORMATS = ("RGB", "BGR")

# MODEL.CLEARCLIP.REFINE choices.
REFINE_CHOICES = ("none", "pamr", "masks")
# PAMR's affinity: -|I_i - I_j| / (PAMR_STD_FACTOR * local std + PAMR_EPS), as in the paper's code.
PAMR_STD_FACTOR = 0.1
PAMR_EPS = 1e-8
# Defaults of the training-free segmentors that use PAMR (SCLIP, NACLIP): 10 iterations over
# neighbourhoods dilated by 8 and 16 pixels of the full-resolution map. The paper refines
# low-resolution masks with dilations (1, 2, 4, 8, 12, 24).
PAMR_DEFAULT_ITERATIONS = 10
PAMR_DEFAULT_DILATIONS = (8, 16)

# Environment variable that overrides the default text-embedding cache folder (the tests point
# it at a temporary folder).
CACHE_DIR_ENV = "CLEARCLIP_D2_CACHE_DIR"


def default_text_cache_dir() -> str:
    """``$CLEARCLIP_D2_CACHE_DIR``, else ``$XDG_CACHE_HOME/clearclip_d2/text_embeddings``
    (``~/.cache`` when ``XDG_CACHE_HOME`` is unset)."""
    if os.environ.get(CACHE_DIR_ENV):
        return os.environ[CACHE_DIR_ENV]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "clearclip_d2", "text_embeddings")


PROMPT_TEMPLATES_FILE = os.path.join(RESOURCE_DIR, "prompt_templates_openai_imagenet.txt")


def class_names_file(benchmark: str) -> str:
    """Path of a bundled reference class list, e.g. ``class_names_file("coco_stuff")``."""
    return os.path.join(CLASS_NAMES_DIR, f"{benchmark}.txt")


def openai_imagenet_templates() -> list:
    """The 80 OpenAI ImageNet prompt templates, each with one ``{}`` for the class name."""
    with open(PROMPT_TEMPLATES_FILE, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.strip()]


# ---------------------------------------------------------------------------- benchmarks
# MODEL.CLEARCLIP.PROB_THRESHOLD value that means "the test dataset's clearclip_prob_threshold".
PROB_THRESHOLD_FROM_DATASET = -1.0

# The reference's background threshold per benchmark: where the highest class probability is
# below it, class 0 (background) is predicted; 0 = no threshold. The two large-vocabulary
# benchmarks are not in the paper and have no background class.
# (docs/DESIGN.md#background-threshold-in-the-metadata)
REFERENCE_PROB_THRESHOLDS = {
    "voc20": 0.0,
    "voc21": 0.5,
    "context59": 0.0,
    "context60": 0.15,
    "coco_object": 0.4,
    "coco_stuff": 0.0,
    "cityscapes": 0.0,
    "ade20k": 0.0,
    "ade20k_full": 0.0,
    "context459": 0.0,
}

# (crop, stride) of the reference's sliding window where it is not (SLIDE_CROP, SLIDE_STRIDE).
REFERENCE_SLIDE_WINDOWS = {"cityscapes": (224, 224)}

# Each method's paper numbers: resources/paper_results/<method>.tsv, lines
# ``benchmark<TAB>mIoU`` (ViT-B/16), a third column ``unverified`` where the number was not
# checked against the paper; ``#`` lines are comments (the source).
PAPER_RESULTS_DIR = os.path.join(RESOURCE_DIR, "paper_results")


def paper_results(method: str) -> dict:
    """``{benchmark: (mIoU %, verified)}`` of ``resources/paper_results/<method>.tsv``."""
    results = {}
    with open(os.path.join(PAPER_RESULTS_DIR, f"{method}.tsv"), encoding="utf-8") as f:
        for line in f:
            if line.strip() and not line.startswith("#"):
                benchmark, miou, *flag = line.rstrip("\n").split("\t")
                results[benchmark] = (float(miou), flag != ["unverified"])
    return results


# The paper's mIoU (%, mmseg's definition: classes present in the ground truth or the prediction)
# per architecture and benchmark (Tables 2 and 3); ViT-B/16 from resources/paper_results/clearclip.tsv.
PAPER_MIOU = {
    "ViT-B-16": {benchmark: miou for benchmark, (miou, _) in paper_results("clearclip").items()},
    "ViT-L-14": {
        "voc20": 80.0,
        "context59": 29.6,
        "coco_stuff": 19.9,
        "cityscapes": 27.9,
        "ade20k": 15.0,
    },
}

# MODEL.CLEARCLIP.WINDOW_PADDING: "centred" zero-pads each sliding window to a multiple of the
# encoder's patch (ClearCLIP); "none" encodes it as it is, the patch embedding truncating it
# (SCLIP, NACLIP and the methods built on them).
WINDOW_PADDINGS = ("centred", "none")

# ---------------------------------------------------------------------------- method pipelines
# MODEL.CLEARCLIP.WHOLE_IMAGE_UPSAMPLE (SLIDE_CROP 0): "direct" = patch-grid logits bilinearly to
# the output size (ClearCLIP, SCLIP); "via_input" = to the resized input first, then to the
# output size, two bilinear steps (NACLIP, ResCLIP).
WHOLE_IMAGE_UPSAMPLES = ("direct", "via_input")

# MODEL.CLEARCLIP.CLASS_NAMES_FILE prefix naming a shipped list: "resources:sclip/voc21" =
# resources/class_names/sclip/voc21.txt.
CLASS_NAMES_RESOURCE_PREFIX = "resources:"

# SC-CLIP (MODEL.CLEARCLIP.SC_CLIP, ENCODER "sc_clip"): the authors' defaults for ViT-B/16
# (SuleBai/SC-CLIP at 0417ba9, clip/model.py). Layer indices count the outputs of blocks
# 1..L-1 from 0 (index i = the output of block i + 1); the multi-level range is [start, end).
SC_CLIP_PRE_ADJUST_INDEX = 8
SC_CLIP_POST_ADJUST_INDEX = 3
SC_CLIP_MULTI_START_INDEX = 3
SC_CLIP_MULTI_END_INDEX = 10
SC_CLIP_RES_CLS = 0.3
SC_CLIP_BETA = 0.4
SC_CLIP_ATTENTION_SHARPNESS = 3.0
SC_CLIP_LOF_NEIGHBOURS = 30
SC_CLIP_LOF_CONTAMINATION = 0.05

# ---------------------------------------------------------------------------- ResCLIP
# ResCLIP (Yang et al., CVPR 2025; github.com/yvhangyang/ResCLIP at 0e085f7), MODEL.CLEARCLIP.RESCLIP.*
# defaults: its COCO-Stuff settings (configs/cfg_coco_stuff164k.py, clip/model.py). Blocks whose
# attention maps are averaged for the residual cross-correlation (0-based: blocks 6-9 of ViT-B/16,
# hard-coded for every backbone in the authors' code).
RESCLIP_RCS_LAYERS = (5, 6, 7, 8)
# (tau, lambda) of the residual cross-correlation (RCS) and of the semantic feedback (SFR) mixes.
RESCLIP_RCS_WEIGHTS = (2.0, 0.4)
RESCLIP_SFR_WEIGHTS = (1.8, 0.7)
# First-pass probability below which a pixel counts as query 0 in the feedback ("temp_thd").
RESCLIP_FIRST_PASS_THRESHOLD = 0.11
# PAMR of the first pass (always on in the authors' code): iterations and dilations in pixels.
RESCLIP_FIRST_PASS_PAMR_ITERATIONS = 10
RESCLIP_FIRST_PASS_PAMR_DILATIONS = (8, 16)
