"""Every file the project writes goes through ``clearclip_d2.utils.io.atomic_write`` (temp file + rename)."""

import glob
import os
import re

from conftest import REPO_ROOT

# Ways to write a file directly; the one allowed place is the atomic writer itself.
DIRECT_WRITES = [
    re.compile(r"""\bopen\([^)]*["'][wax]b?\+?["']"""),  # open(path, "w"), PathManager.open(path, "wb")...
    re.compile(r"""\bmode\s*=\s*["'][wax]"""),
    re.compile(r"\.write_(text|bytes)\("),
    re.compile(r"\btorch\.save\([^,]+,(?!\s*(f|buffer)\b)"),  # torch.save(obj, path)
    re.compile(r"\b(np|numpy)\.save(z|z_compressed|txt)?\((?!\s*(f|buffer)\b)"),  # np.save(path, array)
    re.compile(r"\bcv2\.imwrite\("),
    re.compile(r"(?<!torch)(?<!np)\.save\((?!\s*(f|buffer)\b)\s*[\w\"'(]"),  # PIL: image.save(path) instead of image.save(f)
]
ALLOWED = {os.path.join("clearclip_d2", "utils", "io.py")}


def project_sources():
    patterns = ["clearclip_d2/**/*.py", "tools/*.py", "datasets/*.py"]
    for pattern in patterns:
        for path in glob.glob(os.path.join(REPO_ROOT, pattern), recursive=True):
            relative = os.path.relpath(path, REPO_ROOT)
            if relative not in ALLOWED:
                yield relative, path


def test_no_direct_file_writes_in_the_project():
    offenders = []
    for relative, path in project_sources():
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                code = line.split("#", 1)[0]
                if any(pattern.search(code) for pattern in DIRECT_WRITES):
                    offenders.append(f"{relative}:{number}: {line.strip()}")
    assert not offenders, "write these through atomic_write:\n" + "\n".join(offenders)


def test_the_check_finds_direct_writes():
    samples = ['with open(path, "w") as f:', "torch.save(state, path)", 'Image.fromarray(x).save("a.png")',
               "np.save(path, array)", "p.write_text('x')", 'PathManager.open(p, "wb")']
    for sample in samples:
        assert any(pattern.search(sample) for pattern in DIRECT_WRITES), sample
    for fine in ["image.save(f, format='PNG')", "torch.save(res, f)", 'open(path, encoding="utf-8")', "label.save(buffer, format='PNG')"]:
        assert not any(pattern.search(fine) for pattern in DIRECT_WRITES), fine


def test_default_setup_writes_the_config_and_keeps_detectron2s_cudnn_setting(tmp_path, monkeypatch):
    import argparse

    import torch
    from detectron2.config import get_cfg

    from clearclip_d2 import add_clearclip_config
    from clearclip_d2.engine.defaults import default_setup

    cfg = get_cfg()
    add_clearclip_config(cfg)
    cfg.OUTPUT_DIR, cfg.CUDNN_BENCHMARK = str(tmp_path), True
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    default_setup(cfg, argparse.Namespace(eval_only=True))
    assert torch.backends.cudnn.benchmark is False  # evaluation: Detectron2 leaves it alone
    assert (tmp_path / "config.yaml").read_text() == cfg.dump()
    default_setup(cfg, argparse.Namespace(eval_only=False))
    assert torch.backends.cudnn.benchmark is True
