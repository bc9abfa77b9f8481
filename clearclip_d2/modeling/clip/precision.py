"""``MODEL.CLEARCLIP.PRECISION``: the image encoder in fp32, or in fp16 / bf16 through autocast.

Only the image encoder runs under ``torch.autocast``; its patch features are cast back to
fp32, so the text embeddings, cosine similarities, upsampling, softmax and the background
threshold are always computed in fp32. On CUDA both half precisions are supported. On the
CPU bf16 autocast is allowed (fast on CPUs with AVX512-BF16/AMX, slow elsewhere) and fp16 is
refused: CPU kernels have little fp16 support, so it would be slower than fp32 at lower
accuracy, and a silent fall-back would misreport what was measured.
"""

import contextlib
from typing import Callable, Dict, Optional

import torch

from ...checks import check_precision

# The autocast dtype of each name of constants.PRECISION_NAMES (None: no autocast).
PRECISIONS: Dict[str, Optional[torch.dtype]] = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def with_precision(encode: Callable[[torch.Tensor], torch.Tensor], device: torch.device, precision: str):
    """``encode`` run under ``torch.autocast`` at ``precision`` on ``device`` (none for fp32),
    its output as fp32. The precision is checked here, before anything is encoded."""
    check_precision(precision, str(device))
    dtype = PRECISIONS[precision]
    device_type = torch.device(device).type

    def encode_at_precision(images: torch.Tensor) -> torch.Tensor:
        autocast = contextlib.nullcontext() if dtype is None else torch.autocast(device_type=device_type, dtype=dtype)
        with autocast:
            features = encode(images)
        return features.float()

    return encode_at_precision
