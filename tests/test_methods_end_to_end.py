"""Every method preset (configs/methods/*.yaml) end to end: ``tools/train_net.py --eval-only`` on a
synthetic COCO-Stuff (three tiny images) on one process; then all but one image's shard is deleted
and the evaluation resumed (``--resume-eval``) on two processes, to the same metrics.

A method that adds a preset adds its entry to :data:`TINY_OVERRIDES`: the config keys that make
it run on the tiny random 2-block CLIP of tests/conftest.py (and a tiny version of any other model).
"""

import glob
import json
import os

import pytest

from conftest import REPO_ROOT
from synthetic_coco import write_coco_stuff_layout
from test_train_net import run_train_net

PRESETS = sorted(glob.glob(os.path.join(REPO_ROOT, "configs", "methods", "*.yaml")))
DATASET = "coco_2017_val_stuff_sem_seg"
SIZES = [(48, 64), (64, 48), (56, 80)]
TEMPLATES = ["a photo of a {}."]
# Every preset: small inputs (short side 64) cut into square 48-pixel windows (3 x 3 patches), no loader workers.
TINY_RUN = {"INPUT.MIN_SIZE_TEST": 64, "INPUT.MAX_SIZE_TEST": 128, "MODEL.CLEARCLIP.SLIDE_CROP": 48, "MODEL.CLEARCLIP.SLIDE_STRIDE": 32,
            "DATALOADER.NUM_WORKERS": 0}
# Stands for the path of the seeded tiny VFM's weights (fixture ``tiny_vfm_file``).
TINY_VFM_FILE = object()
# Per method (the preset's file stem): KEY VALUE overrides, besides the tiny CLIP and TINY_RUN.
TINY_OVERRIDES = {
    "clip": {},
    "maskclip": {},
    "sclip": {},
    "naclip": {"MODEL.CLEARCLIP.PAMR_DILATIONS": "[1, 2]"},  # PAMR stays on; small dilations for 48-pixel images
    # timm's test_vit (patch 16) from a file: PRETRAINED "" would draw other weights in every process.
    "proxyclip": {"MODEL.CLEARCLIP.PROXY.MODEL_NAME": "test_vit", "MODEL.CLEARCLIP.PROXY.PRETRAINED": TINY_VFM_FILE},
    # 2 blocks, 1 before the last: every layer index is 0. 4 LOF neighbours fit a 3 x 3-patch window.
    "sc_clip": {"MODEL.CLEARCLIP.SC_CLIP.PRE_ADJUST_INDEX": 0, "MODEL.CLEARCLIP.SC_CLIP.POST_ADJUST_INDEX": 0,
                "MODEL.CLEARCLIP.SC_CLIP.MULTI_START_INDEX": 0, "MODEL.CLEARCLIP.SC_CLIP.MULTI_END_INDEX": 1,
                "MODEL.CLEARCLIP.SC_CLIP.LOF_NEIGHBOURS": 4},
    "resclip": {"MODEL.CLEARCLIP.RESCLIP.RCS_LAYERS": "[0]"},
}


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    return write_coco_stuff_layout(tmp_path_factory.mktemp("d2datasets"), SIZES, num_labels=12, block=16)


@pytest.fixture(scope="module")
def tiny_vfm_file(tmp_path_factory):
    """Safetensors file of timm's ``test_vit`` with seeded random weights (the same in every process)."""
    import timm
    import torch
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("tiny_vfm") / "test_vit.safetensors"
    torch.manual_seed(0)
    save_file(timm.create_model("test_vit", num_classes=0).state_dict(), str(path))
    return str(path)


def method_of(config):
    return os.path.splitext(os.path.basename(config))[0]


def tiny_overrides(method, vfm_file):
    """``KEY VALUE ...`` command-line overrides of ``method``'s preset for the tiny models and images."""
    overrides = {**TINY_RUN, **TINY_OVERRIDES[method]}
    return [str(item) for key, value in overrides.items() for item in (key, vfm_file if value is TINY_VFM_FILE else value)]


def test_every_preset_has_tiny_overrides():
    assert PRESETS and sorted(map(method_of, PRESETS)) == sorted(TINY_OVERRIDES)


@pytest.mark.parametrize("config", PRESETS, ids=method_of)
def test_preset_evaluates_and_resumes_on_two_processes(coco_root, tmp_path, tiny_model_files, tiny_vfm_file, config):
    output = tmp_path / "out"

    def evaluate(num_gpus, flags=(), check=True):
        return run_train_net(coco_root, output, *tiny_overrides(method_of(config), tiny_vfm_file), num_gpus=num_gpus,
                             model_files=tiny_model_files, flags=flags, templates=TEMPLATES, config=config, check=check)

    def keep_only_the_first_shard():
        shards = output / "eval_shards" / "images"
        for name in sorted(name for name in os.listdir(shards) if name.endswith(".json"))[1:]:
            os.remove(shards / name)
        if (output / "metrics.json").exists():
            os.remove(output / "metrics.json")

    evaluate(num_gpus=1)
    metrics = (output / "metrics.json").read_bytes()
    results = json.loads(metrics)[DATASET]
    assert results["evaluation"]["images"] == len(SIZES)
    assert {"mIoU", "mIoU-mmseg", "pACC"} <= set(results["sem_seg"])  # (a random tiny CLIP may hit no labelled class)
    keep_only_the_first_shard()
    resumed = evaluate(num_gpus=2, flags=["--resume-eval"], check=False)
    if resumed.returncode != 0 and "terminated with signal SIGABRT" in resumed.stderr:
        # Seen once in CI-like runs (ResCLIP): a gloo worker aborting at start-up ("terminate called
        # without an active exception"), not yet understood; one retry from the same state, so that
        # a second abort still fails. Noted in the closing note of this change as open.
        keep_only_the_first_shard()
        resumed = evaluate(num_gpus=2, flags=["--resume-eval"], check=False)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resuming {DATASET}: 1 of {len(SIZES)} images are done" in resumed.stdout + resumed.stderr
    assert (output / "metrics.json").read_bytes() == metrics


def test_every_method_has_a_preset_for_each_paper_number_and_the_table_shows_ours(tmp_path):
    from clearclip_d2.constants import paper_results
    from clearclip_d2.engine.reproduce import method_names, method_presets, method_table

    for method in method_names():
        assert set(paper_results(method)) <= set(method_presets(method)), method
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"voc_2012_val_21": {"sem_seg": {"mIoU-mmseg": 63.456, "mIoU": 60.0}}}))
    table = method_table("naclip", [str(metrics)])
    assert "| VOC21 | `configs/methods/naclip/voc21.yaml` | 64.07 | 63.46 |" in table
    assert "| COCO-Stuff | `configs/methods/naclip.yaml` | 25.69 | – |" in table
    assert "80.4*" in method_table("sclip") and "not checked" in method_table("sclip")
