"""Installs into the environments users have (issue 13), checked through pip's own resolver.

* ``pip install -e .`` into an environment holding numpy 2 and ``opencv-python`` 5 changes
  neither: pip's ``--dry-run --report`` plans to install clearclip_d2 alone. The environment is
  this one plus a folder on ``PYTHONPATH`` with the two distributions' metadata (pip reads
  installed distributions from ``sys.path``, first one first), resolved offline (``--no-index``).
* Without OpenCV, ``import clearclip_d2`` fails with one line naming the fix.
* ``requirements.txt`` resolves on each CPython 3.9-3.13 to wheels only (but for the pure-Python
  sdists below) without backtracking. That needs the package index and about a minute per
  Python: run with ``make check-requirements`` (or ``CLEARCLIP_D2_CHECK_PYTHONS="3.12 3.13"``).
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REQUIREMENTS = os.path.join(REPO_ROOT, "requirements.txt")
PURE_PYTHON_SDISTS = {"fvcore", "iopath", "antlr4-python3-runtime"}  # no wheels published; nothing to compile
BACKTRACKING = "pip is looking at multiple versions"
PYTHONS_TO_CHECK = os.environ.get("CLEARCLIP_D2_CHECK_PYTHONS", "").split()


def canonical(name: str) -> str:
    return name.lower().replace("_", "-")


def write_installed_distribution(folder, name: str, version: str, requires=()) -> None:
    """The ``.dist-info`` metadata pip reads for an installed distribution (no code)."""
    dist_info = folder / f"{name}-{version}.dist-info"
    dist_info.mkdir()
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    lines += [f"Requires-Dist: {requirement}" for requirement in requires]
    (dist_info / "METADATA").write_text("\n".join(lines) + "\n")
    (dist_info / "INSTALLER").write_text("pip\n")
    (dist_info / "RECORD").write_text("")


def pip_dry_run(python, args, report_path, env=None):
    """``python -m pip install --dry-run --report``: (the report's installs as {name: version}, output)."""
    cmd = [python, "-m", "pip", "install", "--dry-run", "--report", str(report_path), *args]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=900)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{output[-3000:]}"
    with open(report_path, encoding="utf-8") as f:
        report = json.load(f)
    return report["install"], output


def test_editable_install_keeps_the_users_numpy_2_and_opencv_python_5(tmp_path):
    pytest.importorskip("setuptools", reason="the offline resolution builds setup.py's metadata without isolation")
    environment = tmp_path / "site"
    environment.mkdir()
    write_installed_distribution(environment, "numpy", "2.4.6")
    write_installed_distribution(environment, "opencv_python", "5.0.0.93", requires=["numpy>=2"])
    env = dict(os.environ, PYTHONPATH=str(environment), PIP_NO_INDEX="1")
    installs, _ = pip_dry_run(sys.executable, ["--quiet", "--no-build-isolation", "-e", REPO_ROOT], tmp_path / "report.json", env)
    assert [canonical(item["metadata"]["name"]) for item in installs] == ["clearclip-d2"]


def test_import_without_opencv_names_the_fix_in_one_line():
    code = "import sys; sys.modules['cv2'] = None; import clearclip_d2"
    env = dict(os.environ, PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("clearclip_d2.utils.errors.ClearCLIPError: clearclip_d2 needs OpenCV"), result.stderr
    assert "pip install opencv-python-headless" in last_line


def python_executable(version: str):
    """``python3.X`` on PATH (pyenv's shims included), or None."""
    return shutil.which(f"python{version}")


@pytest.mark.parametrize("version", PYTHONS_TO_CHECK or [pytest.param("3.x", marks=pytest.mark.skip(
    reason="needs the package index and ~1 min per Python: make check-requirements"))])
def test_requirements_resolve_to_wheels_without_backtracking(version, tmp_path):
    python = python_executable(version)
    if python is None:
        pytest.skip(f"python{version} is not on PATH")
    args = ["--ignore-installed", "--only-binary=:all:", "--no-binary=" + ",".join(sorted(PURE_PYTHON_SDISTS)), "-r", REQUIREMENTS]
    installs, output = pip_dry_run(python, args, tmp_path / "report.json")
    assert BACKTRACKING not in output, f"pip backtracked on Python {version}:\n{output[-3000:]}"
    sdists = {canonical(item["metadata"]["name"]) for item in installs if not item["download_info"]["url"].endswith(".whl")}
    assert sdists <= PURE_PYTHON_SDISTS, f"Python {version} would build {sorted(sdists - PURE_PYTHON_SDISTS)} from source"
    versions = {canonical(item["metadata"]["name"]): item["metadata"]["version"] for item in installs}
    assert versions["numpy"].startswith("2."), versions["numpy"]
