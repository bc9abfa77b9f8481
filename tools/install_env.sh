#!/usr/bin/env bash
# Create (if missing) and fill the virtual environment of clearclip_d2:
#   1. the venv itself            ($PYTHON -m venv $VENV)
#   2. PyTorch                    (the torch/torchvision pins of requirements.txt; skipped if
#                                  torch and torchvision already import in the venv)
#   3. the pinned requirements    (requirements.txt without torch/torchvision)
#   4. Detectron2                 (skipped if `import detectron2` already works), either
#        D2=sal       (default) the `sal-detectron2` wheel from PyPI: upstream Detectron2's Python
#                     code, unpacked into $VENV/detectron2 and put on sys.path by a .pth file
#                     (its compiled _C is for CPython 3.10 and is not used; ClearCLIP needs none of it)
#        D2=official  the official route, needs internet and a compiler:
#                     pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git'
#        D2=v06       Detectron2 v0.6's Python code (the last release), patched to import without its
#                     C++ ops, and iopath<0.1.10 as v0.6 requires (tools/install_detectron2_v06.sh;
#                     `make test-d2-v06` uses it in its own venv)
#   5. this package, editable     (pip install -e .)
#
# Settings (environment variables): PYTHON (default python3, >= 3.9), VENV (default .venv),
# D2 (sal | official | v06), D2_SAL_SPEC (default sal-detectron2==0.7.2), D2_GIT_URL.
# Usually run through `make install` / `make test` / `make demo`.
set -euo pipefail

cd "$(dirname "$0")/.."
REPO_ROOT="$(pwd)"
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
D2="${D2:-sal}"
D2_SAL_SPEC="${D2_SAL_SPEC:-sal-detectron2==0.7.2}"
D2_GIT_URL="${D2_GIT_URL:-git+https://github.com/facebookresearch/detectron2.git}"
REQUIREMENTS="$REPO_ROOT/requirements.txt"
TORCH_PATTERN='^(torch|torchvision)[[:space:]]*(==|>=|<=|~=|$)'

step() { printf '\n==> [install_env] %s\n' "$*"; }
run() { printf '+ %s\n' "$*"; "$@"; }
die() { printf 'install_env.sh: error: %s\n' "$*" >&2; exit 1; }
trap 'rc=$?; printf "install_env.sh: FAILED (exit %s) at line %s: %s\n" "$rc" "$LINENO" "$BASH_COMMAND" >&2' ERR

case "$D2" in
  sal | official | v06) ;;
  *) die "D2=$D2: use D2=sal (PyPI wheel, default), D2=official (build from GitHub) or D2=v06 (Detectron2 v0.6)" ;;
esac
[ -f "$REQUIREMENTS" ] || die "$REQUIREMENTS is missing"
START=$SECONDS

# ----------------------------------------------------------------------------- 1. venv
if [ -x "$VENV/bin/python" ]; then
  step "virtual environment $VENV exists"
else
  command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found; set PYTHON=/path/to/python3 (>= 3.9)"
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 9))' \
    || die "$PYTHON is Python $("$PYTHON" -c 'import platform; print(platform.python_version())'); clearclip_d2 needs >= 3.9"
  step "creating virtual environment $VENV with $("$PYTHON" -c 'import sys; print(sys.executable, sys.version.split()[0])')"
  run "$PYTHON" -m venv "$VENV"
fi
VENV_ABS="$(cd "$VENV" && pwd)"
PY="$VENV_ABS/bin/python"
PIP=("$PY" -m pip)
"$PY" -m pip --version >/dev/null 2>&1 || die "$VENV has no working pip; remove it (rm -rf $VENV) and run again"
echo "python: $PY ($("$PY" -c 'import platform; print(platform.python_version())'))"

# ----------------------------------------------------------------------------- 2. torch
if "$PY" -c 'import torch, torchvision' >/dev/null 2>&1; then
  step "PyTorch already installed: $("$PY" -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision", torchvision.__version__)') (not changed)"
else
  mapfile -t TORCH_REQS < <(grep -E "$TORCH_PATTERN" "$REQUIREMENTS")
  [ "${#TORCH_REQS[@]}" -gt 0 ] || die "no torch/torchvision lines in $REQUIREMENTS"
  # numpy's pin goes along so that torch does not pull another numpy only for step 3 to replace it.
  mapfile -t NUMPY_REQ < <(grep -E '^numpy[[:space:]]*[=<>~]' "$REQUIREMENTS" || true)
  step "installing PyTorch (${TORCH_REQS[*]}); for another CUDA/CPU build install torch into $VENV first"
  run "${PIP[@]}" install "${TORCH_REQS[@]}" "${NUMPY_REQ[@]}"
fi

# ----------------------------------------------------------------------------- 3. requirements
step "installing the pinned requirements ($REQUIREMENTS, torch lines excluded)"
OTHER_REQS="$VENV_ABS/.requirements-no-torch.txt"
grep -v -E "$TORCH_PATTERN" "$REQUIREMENTS" > "$OTHER_REQS"
run "${PIP[@]}" install -r "$OTHER_REQS"
if [ "$D2" = v06 ]; then
  run "${PIP[@]}" install "iopath<0.1.10"  # Detectron2 v0.6's bound (requirements.txt pins 0.1.10 for main)
fi

# ----------------------------------------------------------------------------- 4. detectron2
if "$PY" -c 'import detectron2' >/dev/null 2>&1; then
  step "Detectron2 already importable: $("$PY" -c 'import detectron2, os; print(detectron2.__version__, "from", os.path.dirname(detectron2.__file__))') (not changed)"
elif [ "$D2" = official ]; then
  step "installing Detectron2 the official way (D2=official; needs internet and a C++ compiler)"
  run "${PIP[@]}" install setuptools wheel
  run "${PIP[@]}" install --no-build-isolation "$D2_GIT_URL"
elif [ "$D2" = v06 ]; then
  step "installing Detectron2 v0.6's Python code into $VENV_ABS/detectron2-v06 (D2=v06)"
  run bash "$REPO_ROOT/tools/install_detectron2_v06.sh" "$PY" "$VENV_ABS/detectron2-v06"
else
  D2_DIR="$VENV_ABS/detectron2"
  step "installing Detectron2 from the $D2_SAL_SPEC wheel into $D2_DIR (D2=sal; D2=official builds from GitHub instead)"
  run "${PIP[@]}" install --no-deps --upgrade --target "$D2_DIR" --python-version 3.10 --only-binary=:all: "$D2_SAL_SPEC"
  SITE_PACKAGES="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  echo "+ echo $D2_DIR > $SITE_PACKAGES/detectron2_sal.pth"
  echo "$D2_DIR" > "$SITE_PACKAGES/detectron2_sal.pth"
fi
"$PY" -c 'import detectron2, detectron2.modeling, detectron2.utils.visualizer' \
  || die "Detectron2 does not import in $VENV (see the traceback above)"

# ----------------------------------------------------------------------------- 5. this package
step "installing clearclip_d2 (editable)"
run "${PIP[@]}" install -e "$REPO_ROOT"
"$PY" -c 'import clearclip_d2, os; print("clearclip_d2", clearclip_d2.__version__, "from", os.path.dirname(clearclip_d2.__file__))'

step "done in $((SECONDS - START)) s: $VENV is ready"
