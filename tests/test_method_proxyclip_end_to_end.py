"""ProxyCLIP end to end: ``tools/train_net.py --eval-only --config-file configs/methods/proxyclip.yaml``
on a synthetic COCO-Stuff, on one process, then resumed (``--resume-eval``) on two.

The tiny CLIP of the conftest; as VFM timm's ``test_vit`` (a tiny ViT of timm's registry, patch
16, pretrained grid 10 x 10) with seeded random weights from a file (``PRETRAINED ""`` would
draw other weights in every process), since a model registered in the test process does not
exist in train_net's. (Until issue 11's tests/test_methods_end_to_end.py, whose
TINY_OVERRIDES would take PROXY_TINY_OVERRIDES.)
"""

import json
import os

import timm
import torch
from safetensors.torch import save_file

from test_train_net import REPO_ROOT, run_train_net, write_coco_stuff

CONFIG = os.path.join(REPO_ROOT, "configs", "methods", "proxyclip.yaml")
DATASET = "coco_2017_val_stuff_sem_seg"
SIZES = [(48, 64), (64, 48), (56, 80)]
PROXY_TINY_OVERRIDES = ("MODEL.CLEARCLIP.PROXY.MODEL_NAME", "test_vit", "MODEL.CLEARCLIP.SLIDE_CROP", "48", "MODEL.CLEARCLIP.SLIDE_STRIDE", "32",
                        "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "128")


def random_vfm_file(path) -> str:
    torch.manual_seed(0)
    save_file(timm.create_model("test_vit", num_classes=0).state_dict(), str(path))
    return str(path)


def evaluate(root, output, model_files, vfm_file, num_gpus=1, flags=()):
    return run_train_net(root, output, *PROXY_TINY_OVERRIDES, "MODEL.CLEARCLIP.PROXY.PRETRAINED", vfm_file, num_gpus=num_gpus, model_files=model_files, flags=flags,
                         templates=["a photo of a {}."], config=CONFIG)


def test_proxyclip_preset_evaluates_and_resumes_on_two_processes(tmp_path, tiny_model_files):
    root = tmp_path / "data"
    write_coco_stuff(root, SIZES, block=16, ignore_rows=3)
    output = tmp_path / "out"
    vfm_file = random_vfm_file(tmp_path / "test_vit.safetensors")
    evaluate(root, output, tiny_model_files, vfm_file)
    metrics = (output / "metrics.json").read_bytes()
    assert 0 < json.loads(metrics)[DATASET]["sem_seg"]["mIoU"] <= 100
    shards = output / "eval_shards" / "images"
    removed = sorted(name for name in os.listdir(shards) if name.endswith(".json"))[1:]
    assert len(removed) == len(SIZES) - 1
    for name in removed:
        os.remove(shards / name)
    os.remove(output / "metrics.json")
    resumed = evaluate(root, output, tiny_model_files, vfm_file, num_gpus=2, flags=["--resume-eval"])
    assert f"Resuming {DATASET}: 1 of {len(SIZES)} images are done" in resumed.stderr + resumed.stdout
    assert (output / "metrics.json").read_bytes() == metrics
