"""The CUDA paths of the plugin against its CPU fp32 path (tiny random models, synthetic data).

Every test here is marked ``cuda`` and skipped where ``torch.cuda.is_available()`` is False, so
this file passes on a CPU-only machine by skipping. ``tools/gpu_check.sh`` runs it on a GPU
(``pytest -m cuda tests/test_cuda.py``). What it checks:

* CUDA fp32 against CPU fp32: probabilities within 1e-4 (also with TF32 convolutions and matrix
  products switched off, so that a failure of the first says whether TF32 is the cause);
* ``MODEL.CLEARCLIP.PRECISION`` fp16 and bf16 (autocast) and fp16_weights (the authors'
  numerics) against CUDA fp32: the same argmax on at least 99% of the pixels;
* the class-chunked path on CUDA: the plain path's argmax;
* the documented memory bound (``peak_bytes_bound``) against ``torch.cuda.max_memory_allocated``
  with a 5,000-class vocabulary;
* ``tools/train_net.py --eval-only`` on a synthetic COCO-Stuff: one CUDA process against one CPU
  process, and 2 NCCL processes against one when two GPUs exist;
* each image encoder (decomposed, proxyclip, sc_clip, resclip) on CUDA against the CPU, 1e-4.
"""

import json
import os

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model

from conftest import TINY_VIT, save_random_checkpoint, tiny_cfg, write_model_config
from synthetic_coco import write_coco_stuff_layout
from test_modeling_exactness import CLASSES, build_segmentor, run_plugin, smooth_image
from test_train_net import SIZES, run_train_net

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda.is_available() is False)"),
]

PROB_ATOL = 1e-4
MIN_ARGMAX_AGREEMENT = 0.99
CUDA = {"MODEL.DEVICE": "cuda"}
CHUNKED = {"MODEL.CLEARCLIP.MAX_DENSE_ELEMENTS": 0, "MODEL.CLEARCLIP.CLASS_CHUNK": 4}


def argmax_agreement(probs: torch.Tensor, other: torch.Tensor) -> float:
    """Fraction of pixels where [K, H, W] ``probs`` and ``other`` predict the same class."""
    return (probs.argmax(0) == other.argmax(0)).float().mean().item()


def assert_close_probabilities(probs: torch.Tensor, expected: torch.Tensor) -> None:
    assert probs.shape == expected.shape
    difference = (probs.float().cpu() - expected.float().cpu()).abs().max().item()
    assert difference <= PROB_ATOL, f"largest probability difference {difference:.2e} > {PROB_ATOL}"


@pytest.fixture(scope="module")
def image():
    return smooth_image(333, 517, seed=4)


@pytest.fixture(scope="module")
def cpu_probs(tiny_model_files, image):
    with torch.no_grad():
        return run_plugin(build_segmentor(tiny_model_files), image)


@pytest.fixture
def no_tf32():
    """TF32 off for matrix products and cuDNN convolutions (the patch embedding) during a test."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def cuda_probs(tiny_model_files, image, **overrides):
    with torch.no_grad():
        probs = run_plugin(build_segmentor(tiny_model_files, **CUDA, **overrides), image)
    assert probs.device.type == "cuda"
    return probs.cpu()


# ------------------------------------------------------------------------------ fp32, precisions
def test_cuda_fp32_matches_cpu_fp32(tiny_model_files, image, cpu_probs):
    """PyTorch's defaults (TF32 convolutions allowed): what a user gets."""
    assert_close_probabilities(cuda_probs(tiny_model_files, image), cpu_probs)


def test_cuda_fp32_without_tf32_matches_cpu_fp32(tiny_model_files, image, cpu_probs, no_tf32):
    assert_close_probabilities(cuda_probs(tiny_model_files, image), cpu_probs)


@pytest.mark.parametrize("precision", ["fp16", "bf16", "fp16_weights"])
def test_half_precisions_agree_with_fp32(tiny_model_files, image, precision):
    fp32 = cuda_probs(tiny_model_files, image)
    half = cuda_probs(tiny_model_files, image, **{"MODEL.CLEARCLIP.PRECISION": precision})
    assert half.dtype == torch.float32 and torch.isfinite(half).all()
    assert len(fp32.argmax(0).unique()) > 1, "a constant prediction would make the comparison weak"
    agreement = argmax_agreement(half, fp32)
    assert agreement >= MIN_ARGMAX_AGREEMENT, f"{precision}: argmax agrees with fp32 on {agreement:.4f} of pixels"


# ------------------------------------------------------------------------------ class chunks, memory
def test_chunked_path_on_cuda_gives_the_plain_argmax(tiny_model_files, image):
    from clearclip_d2.data.transforms import ResizeShortLongEdge
    from clearclip_d2.modeling.inference.class_chunks import LABELS_KEY

    plain = cuda_probs(tiny_model_files, image)
    model = build_segmentor(tiny_model_files, **CUDA, **CHUNKED)
    resized = ResizeShortLongEdge(448, 2048).get_transform(image).apply_image(image)
    inputs = [{"image": torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1))),
               "height": image.shape[0], "width": image.shape[1]}]
    with torch.no_grad():
        labels = model(inputs)[0][LABELS_KEY]
    assert labels.device.type == "cuda"
    assert torch.equal(labels.cpu(), plain.argmax(0))


def test_cuda_peak_memory_within_the_documented_bound(tiny_model_files):
    """5,000 classes on a 480 x 640 image (the plain [Q, H, W] map would be 6.1 GB a copy): the
    rise of ``max_memory_allocated`` during one forward stays within ``peak_bytes_bound`` plus
    ``RUNTIME_BYTES``, and that bound is below one plain map."""
    from clearclip_d2.data.transforms import ResizeShortLongEdge
    from clearclip_d2.modeling.inference.class_chunks import LABELS_KEY, RUNTIME_BYTES, peak_bytes_bound

    height, width, num_classes = 480, 640, 5000
    cfg = tiny_cfg(tiny_model_files, **CUDA, **{"MODEL.CLEARCLIP.PROMPT_TEMPLATES": ["a photo of a {}."]})
    model = build_model(cfg).eval()
    model.set_vocabulary([f"thing number {i}" for i in range(num_classes)])
    original = smooth_image(height, width, seed=7)
    resized = ResizeShortLongEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST).get_transform(original).apply_image(original)
    inputs = [{"image": torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1))), "height": height, "width": width}]
    with torch.no_grad():
        model(inputs)  # warm-up: text embeddings, cuBLAS workspaces, kernels
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        output = model(inputs)[0]
        torch.cuda.synchronize()
    increase = torch.cuda.max_memory_allocated() - before
    assert LABELS_KEY in output, "5,000 classes must take the chunked path"
    visual, cc = model.clip_model.visual, cfg.MODEL.CLEARCLIP
    bound = peak_bytes_bound(
        (height, width), resized.shape[:2], cc.SLIDE_CROP, cc.SLIDE_STRIDE, model.encoder.patch_size,
        visual.transformer.width, visual.transformer.resblocks[0].attn.num_heads, model.encoder.embed_dim,
        cc.WINDOW_BATCH, cc.CLASS_CHUNK, cc.MAX_DENSE_ELEMENTS,
    )
    assert increase <= bound + RUNTIME_BYTES, (increase, bound)
    assert bound + RUNTIME_BYTES < len(model.vocabulary.queries) * height * width * 4


# ------------------------------------------------------------------------------ evaluation processes
@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    return write_coco_stuff_layout(tmp_path_factory.mktemp("d2datasets_cuda"), SIZES, num_labels=12, block=50)


def evaluation_metrics(coco_root, output_dir, tiny_model_files, device, num_gpus=1):
    run_train_net(coco_root, output_dir, "MODEL.DEVICE", device, num_gpus=num_gpus, model_files=tiny_model_files)
    return json.loads((output_dir / "metrics.json").read_text())["coco_2017_val_stuff_sem_seg"]["sem_seg"]


def test_one_cuda_process_matches_one_cpu_process(coco_root, tmp_path, tiny_model_files):
    cpu = evaluation_metrics(coco_root, tmp_path / "cpu", tiny_model_files, "cpu")
    cuda = evaluation_metrics(coco_root, tmp_path / "cuda", tiny_model_files, "cuda")
    assert cpu.keys() == cuda.keys()
    # Metrics in %: a few argmax flips where two classes are within 1e-4 move them by far less than 0.1.
    for key, value in cpu.items():
        assert cuda[key] == pytest.approx(value, abs=0.1, nan_ok=True), key


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="2-process NCCL evaluation needs 2 GPUs")
def test_two_nccl_processes_match_one_process(coco_root, tmp_path, tiny_model_files):
    one = evaluation_metrics(coco_root, tmp_path / "one", tiny_model_files, "cuda")
    two = evaluation_metrics(coco_root, tmp_path / "two", tiny_model_files, "cuda", num_gpus=2)
    assert two == one


# ------------------------------------------------------------------------------ image encoders
@pytest.fixture(scope="module")
def deep_files(tmp_path_factory):
    """(model JSON, checkpoint) of a tiny random CLIP with 5 visual blocks (sc_clip, resclip)."""
    config = {**TINY_VIT, "vision_cfg": {**TINY_VIT["vision_cfg"], "layers": 5}}
    directory = tmp_path_factory.mktemp("cuda_deep_tiny")
    model_json = write_model_config(directory, "tiny-vit-5", config)
    return model_json, save_random_checkpoint(model_json, os.path.join(str(directory), "tiny-vit-5.safetensors"))


@pytest.fixture(scope="module")
def vfm_path(tmp_path_factory):
    """safetensors weights of the tiny DINO-like VFM of tests/test_method_proxyclip.py."""
    from safetensors.torch import save_file

    from test_reference_proxyclip import tiny_vfm

    path = str(tmp_path_factory.mktemp("cuda_vfm") / "tiny_dino.safetensors")
    save_file({k: v.contiguous() for k, v in tiny_vfm().state_dict().items()}, path)
    return path


def encoder_cfg(encoder, tiny_model_files, deep_files, vfm_path):
    """The config each method's own tests build its tiny model with (on the CPU)."""
    if encoder == "proxyclip":
        from test_method_proxyclip import proxyclip_cfg  # also registers the tiny VFM with timm

        return proxyclip_cfg(tiny_model_files, vfm_path)
    if encoder == "sc_clip":
        from test_method_sc_clip import sc_overrides

        # Square windows: the authors' outlier-position rule needs them.
        return tiny_cfg(deep_files, **sc_overrides(**{"MODEL.CLEARCLIP.SLIDE_CROP": 112, "MODEL.CLEARCLIP.SLIDE_STRIDE": 64}))
    if encoder == "resclip":
        from test_method_resclip import resclip_overrides

        return tiny_cfg(deep_files, **resclip_overrides(64, 32))
    return tiny_cfg(tiny_model_files)


@pytest.mark.parametrize("encoder", ["decomposed", "proxyclip", "sc_clip", "resclip"])
def test_each_encoder_on_cuda_matches_the_cpu(encoder, tiny_model_files, deep_files, vfm_path, no_tf32):
    image = smooth_image(150, 190, seed=3)
    probs = {}
    for device in ("cpu", "cuda"):
        cfg = encoder_cfg(encoder, tiny_model_files, deep_files, vfm_path)
        cfg.MODEL.DEVICE = device
        model = build_model(cfg).eval()
        model.set_vocabulary(CLASSES)
        assert cfg.MODEL.CLEARCLIP.ENCODER == encoder
        with torch.no_grad():
            probs[device] = run_plugin(model, image, resize=False).cpu()
    assert len(probs["cpu"].argmax(0).unique()) > 1, "a constant prediction would make the comparison weak"
    assert_close_probabilities(probs["cuda"], probs["cpu"])
    assert argmax_agreement(probs["cuda"], probs["cpu"]) >= 0.999


# ------------------------------------------------------------------------------ benchmark timer
def test_benchmark_times_cuda_runs_with_events():
    """``time_runs`` on CUDA (CUDA events) agrees with the wall clock around a GPU-bound run."""
    import time

    from clearclip_d2.engine.benchmark import time_runs

    a = torch.randn(4096, 4096, device="cuda")

    def run():
        for _ in range(20):
            a @ a

    event_seconds = time_runs(run, runs=3, warmup=1, device=torch.device("cuda"))
    start = time.perf_counter()
    run()
    torch.cuda.synchronize()
    wall = time.perf_counter() - start
    assert len(event_seconds) == 3 and all(0 < s for s in event_seconds)
    assert 0.5 * wall < min(event_seconds) < 2 * wall, (event_seconds, wall)
