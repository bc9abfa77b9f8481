"""``MODEL.CLEARCLIP.PRECISION``: the image encoder in fp32, or in fp16 / bf16 through autocast,
or the authors' numerics (``fp16_weights``).

Only the image encoder runs under ``torch.autocast``; its patch features are cast back to
fp32, so the text embeddings, cosine similarities, upsampling, softmax and the background
threshold are always computed in fp32. On CUDA both half precisions are supported. On the
CPU bf16 autocast is allowed (fast on CPUs with AVX512-BF16/AMX, slow elsewhere) and fp16 is
refused: CPU kernels have little fp16 support, so it would be slower than fp32 at lower
accuracy, and a silent fall-back would misreport what was measured.

``fp16_weights`` is the authors' numerics (SCLIP, NACLIP and their successors ran
``clip.load`` on CUDA, which keeps fp16 weights): the whole CLIP model is built in fp16
weights with LayerNorm computed in fp32 (open_clip's ``precision="fp16"``, see
:func:`.loading.build_clip_model`), the images are cast to fp16 and no autocast runs; the patch
features and text embeddings are cast to fp32 as in the other modes. CUDA only.
"""

import contextlib
from typing import Callable, Dict, Optional

import torch

from ...checks import check_precision

# The autocast dtype of each name of constants.PRECISION_NAMES (None: no autocast).
PRECISIONS: Dict[str, Optional[torch.dtype]] = {
    "fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16, "fp16_weights": None
}
# The dtype the model's weights are built in, per precision (fp32 where not listed).
WEIGHT_DTYPES: Dict[str, torch.dtype] = {"fp16_weights": torch.float16}


def with_precision(encode: Callable[[torch.Tensor], torch.Tensor], device: torch.device, precision: str):
    """``encode`` run under ``torch.autocast`` at ``precision`` on ``device`` (none for fp32),
    its output as fp32. The precision is checked here, before anything is encoded."""
    check_precision(precision, str(device))
    dtype = PRECISIONS[precision]
    device_type = torch.device(device).type

    weight_dtype = WEIGHT_DTYPES.get(precision)

    def encode_at_precision(images: torch.Tensor) -> torch.Tensor:
        autocast = contextlib.nullcontext() if dtype is None else torch.autocast(device_type=device_type, dtype=dtype)
        with autocast:
            features = encode(images if weight_dtype is None else images.to(weight_dtype))
        return features.float()

    return encode_at_precision
