"""The reference algorithm's constants, in one place.

Values follow the authors' released ClearCLIP code (``../shared/reference/SETTINGS.md``):
configs and code read them from here instead of repeating the numbers.
"""

import os

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

PROMPT_TEMPLATES_FILE = os.path.join(RESOURCE_DIR, "prompt_templates_openai_imagenet.txt")


def class_names_file(benchmark: str) -> str:
    """Path of a bundled reference class list, e.g. ``class_names_file("coco_stuff")``."""
    return os.path.join(CLASS_NAMES_DIR, f"{benchmark}.txt")


def openai_imagenet_templates() -> list:
    """The 80 OpenAI ImageNet prompt templates, each with one ``{}`` for the class name."""
    with open(PROMPT_TEMPLATES_FILE, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.strip()]
