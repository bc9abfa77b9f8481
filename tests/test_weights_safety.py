"""Weight files never run code: MODEL.WEIGHTS and the mask model's weights are read as tensors only,
and a Detectron2 .pkl is loaded only with MODEL.CLEARCLIP.TRUST_PICKLED_WEIGHTS (issue 12, item 1)."""

import builtins
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from conftest import REPO_ROOT, tiny_cfg
from clearclip_d2.utils.errors import ClearCLIPError


class WritesAFileWhenUnpickled:
    """A crafted checkpoint: unpickling it creates ``marker`` (standing for any code)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.open, (self.marker, "w")


def write_crafted_pickle(path, marker):
    with open(path, "wb") as f:
        pickle.dump({"model": WritesAFileWhenUnpickled(marker), "__author__": "attacker"}, f)
    return str(path)


def write_crafted_torch_file(path, marker):
    torch.save({"model": WritesAFileWhenUnpickled(marker)}, str(path))
    return str(path)


@pytest.mark.parametrize("writer", [write_crafted_pickle, write_crafted_torch_file], ids=["pkl", "pth"])
def test_predictor_weights_never_run_code(tiny_model_files, tmp_path, writer):
    from clearclip_d2.engine import ClearCLIPPredictor

    marker = tmp_path / "code_ran"
    weights = writer(tmp_path / ("evil.pkl" if writer is write_crafted_pickle else "evil.pth"), marker)
    with pytest.raises(ClearCLIPError, match="refusing"):
        ClearCLIPPredictor(tiny_cfg(tiny_model_files, **{"MODEL.WEIGHTS": weights}))
    assert not marker.exists()


def test_pickled_weights_need_the_opt_in_named_in_the_error(tmp_path):
    from clearclip_d2.modeling.checkpoint import load_weights

    marker = tmp_path / "code_ran"
    weights = write_crafted_pickle(tmp_path / "model_final.pkl", marker)
    with pytest.raises(ClearCLIPError, match=r"model_final\.pkl.*MODEL\.CLEARCLIP\.TRUST_PICKLED_WEIGHTS True"):
        load_weights(nn.Linear(2, 2), weights)
    assert not marker.exists()
    # With the opt-in, a trusted Detectron2 model-zoo file (numpy arrays) loads as before.
    trusted = tmp_path / "trusted.pkl"
    with open(trusted, "wb") as f:
        pickle.dump({"model": {"weight": np.ones((2, 2), np.float32), "bias": np.zeros(2, np.float32)}, "__author__": "me"}, f)
    model = nn.Linear(2, 2)
    load_weights(model, str(trusted), trust_pickled=True)
    assert torch.equal(model.weight, torch.ones(2, 2))


def test_tensor_checkpoints_still_load_with_their_training_state(tmp_path):
    from clearclip_d2.modeling.checkpoint import SafeDetectionCheckpointer

    source = nn.Linear(3, 2)
    optimizer = torch.optim.SGD(source.parameters(), lr=0.1, momentum=0.9)
    source(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    torch.save({"model": source.state_dict(), "optimizer": optimizer.state_dict(), "iteration": 7}, tmp_path / "model_0007.pth")
    (tmp_path / "last_checkpoint").write_text("model_0007.pth")
    target = nn.Linear(3, 2)
    target_optimizer = torch.optim.SGD(target.parameters(), lr=0.1, momentum=0.9)
    extra = SafeDetectionCheckpointer(target, str(tmp_path), optimizer=target_optimizer).resume_or_load("", resume=True)
    assert extra["iteration"] == 7
    assert torch.equal(target.weight, source.weight)
    assert target_optimizer.state_dict()["state"]


def test_mask_model_weights_never_run_code(tiny_model_files, tmp_path):
    from detectron2.modeling import build_model

    config = tmp_path / "masks.yaml"
    config.write_text('MODEL:\n  META_ARCHITECTURE: "SemanticSegmentor"\n  WEIGHTS: ""\n')
    marker = tmp_path / "code_ran"
    weights = write_crafted_pickle(tmp_path / "mask_model.pkl", marker)
    cfg = tiny_cfg(tiny_model_files, **{"MODEL.CLEARCLIP.REFINE": "masks", "MODEL.CLEARCLIP.MASK_MODEL_CONFIG": str(config),
                                        "MODEL.CLEARCLIP.MASK_MODEL_WEIGHTS": weights})
    with pytest.raises(ClearCLIPError, match="MASK_MODEL_WEIGHTS.*TRUST_PICKLED_WEIGHTS"):
        build_model(cfg)
    assert not marker.exists()


def test_mask_model_loader_reads_tensors_only(tmp_path):
    from test_refinement import FixedMasksModel  # noqa: F401 (registers the meta-architecture)
    from clearclip_d2.modeling.refinement.masks import build_mask_model, load_mask_model_config

    config = tmp_path / "masks.yaml"
    config.write_text('MODEL:\n  META_ARCHITECTURE: "FixedMasksModel"\n  WEIGHTS: ""\n')
    marker = tmp_path / "code_ran"
    mask_cfg = load_mask_model_config(str(config), "random").clone()
    mask_cfg.defrost()
    mask_cfg.MODEL.WEIGHTS = write_crafted_torch_file(tmp_path / "mask_model.pth", marker)
    with pytest.raises(ClearCLIPError, match="refusing checkpoint.*mask_model.pth"):
        build_mask_model(mask_cfg)
    assert not marker.exists()


def test_train_net_refuses_pickled_weights_in_one_line(tiny_model_files, tmp_path):
    marker = tmp_path / "code_ran"
    weights = write_crafted_pickle(tmp_path / "model_final.pkl", marker)
    model_json, checkpoint = tiny_model_files
    cmd = [sys.executable, os.path.join(REPO_ROOT, "tools", "train_net.py"), "--eval-only",
           "--config-file", os.path.join(REPO_ROOT, "configs", "clearclip_coco.yaml"),
           "MODEL.CLEARCLIP.MODEL_NAME", model_json, "MODEL.CLEARCLIP.PRETRAINED", checkpoint,
           "MODEL.WEIGHTS", weights, "OUTPUT_DIR", str(tmp_path / "out"), "DATASETS.TEST", "()"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert result.returncode == 2, result.stderr[-2000:]
    assert "TRUST_PICKLED_WEIGHTS" in result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr
    assert not marker.exists()


def test_a_text_file_given_as_a_checkpoint_is_named(tmp_path):
    from clearclip_d2.modeling.clip.loading import read_checkpoint_safely

    path = tmp_path / "weights.pt"
    path.write_text("hello, this is not a checkpoint\n")
    with pytest.raises(ClearCLIPError, match="weights.pt.*not a PyTorch or safetensors checkpoint"):
        read_checkpoint_safely(str(path))
