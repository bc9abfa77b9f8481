"""Peak memory of ClearCLIP forwards, measured in a fresh process (run by test_class_chunks.py).

Usage: python memory_probe.py MODEL_JSON CHECKPOINT CASES_JSON, where CASES_JSON is a list of
[height, width, num_classes, class_chunk, short_edge] or [..., max_dense_elements] (default the
config's). Prints one JSON line per case: the rise of the peak resident set size during the
forward (VmHWM, reset just before it) over the resident size before it, the documented bound of
the chunked path ("bound") and of whichever path is taken ("guaranteed_bound"), the path taken,
and the size of one plain [Q, H, W] map.
"""

import json
import os
import sys

import cv2
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import tiny_cfg  # noqa: E402


def status_bytes(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def forward(model, height, width, resized):
    image = torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1)))
    with torch.no_grad():
        return model([{"image": image, "height": height, "width": width}])[0]


def measure(model_files, height, width, num_classes, class_chunk, short_edge, max_dense_elements=None):
    from detectron2.modeling import build_model

    from clearclip_d2.data.transforms import ResizeShortLongEdge
    from clearclip_d2.modeling.inference.class_chunks import LABELS_KEY, chunked_peak_bytes, peak_bytes_bound

    overrides = {"MODEL.CLEARCLIP.CLASS_CHUNK": class_chunk, "INPUT.MIN_SIZE_TEST": short_edge,
                 "MODEL.CLEARCLIP.PROMPT_TEMPLATES": ["a photo of a {}."]}
    if max_dense_elements is not None:
        overrides["MODEL.CLEARCLIP.MAX_DENSE_ELEMENTS"] = max_dense_elements
    cfg = tiny_cfg(model_files, **overrides)
    model = build_model(cfg).eval()
    model.set_vocabulary([f"thing number {i}" for i in range(num_classes)])
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (height // 100 + 2, width // 100 + 2, 3)).astype(np.uint8)
    original = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    resized = ResizeShortLongEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST).get_transform(original).apply_image(original)
    del original
    forward(model, 64, 80, resized[:64, :80])  # warm-up: text embeddings, thread pools, kernels
    before = status_bytes("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM) to the current resident size
    output = forward(model, height, width, resized)
    increase = status_bytes("VmHWM") - before
    labels = output[LABELS_KEY] if LABELS_KEY in output else output["sem_seg"].argmax(0)
    assert tuple(labels.shape) == (height, width), list(output)
    visual, cc = model.clip_model.visual, cfg.MODEL.CLEARCLIP
    geometry = (resized.shape[:2], cc.SLIDE_CROP, cc.SLIDE_STRIDE, model.encoder.patch_size, visual.transformer.width,
                visual.transformer.resblocks[0].attn.num_heads, model.encoder.embed_dim, cc.WINDOW_BATCH, class_chunk)
    return {"case": [height, width, num_classes, class_chunk], "increase": increase,
            "bound": chunked_peak_bytes((height, width), *geometry),
            "guaranteed_bound": peak_bytes_bound((height, width), *geometry, cc.MAX_DENSE_ELEMENTS),
            "path": "chunked" if LABELS_KEY in output else "plain",
            "dense_copy": len(model.vocabulary.queries) * height * width * 4,
            "classes": int(labels.max()) + 1}


if __name__ == "__main__":
    torch.set_num_threads(1)
    for case in json.loads(sys.argv[3]):
        print(json.dumps(measure((sys.argv[1], sys.argv[2]), *case)), flush=True)
