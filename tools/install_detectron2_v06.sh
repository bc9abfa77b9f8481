#!/usr/bin/env bash
# Put Detectron2 v0.6's Python code (the last release, 2021) into a venv that has PyTorch, for
# testing clearclip_d2 against it (`make test-d2-v06`). Usually run by tools/install_env.sh (D2=v06).
#
#   tools/install_detectron2_v06.sh VENV_PYTHON DEST
#
# v0.6 is on PyPI only as the `pb1-detectron2` 0.6 sdist, whose C++ sources are missing, so it is
# not built: its `detectron2/` folder is unpacked into DEST (replacing an earlier copy) and put on
# sys.path by a .pth file, with two patches:
#   - detectron2/_C.py: a stand-in for the compiled ops (none of which ClearCLIP uses), with the
#     version functions utils/collect_env.py calls and has_cuda() = False;
#   - data/transforms/transform.py: Image.LINEAR -> Image.BILINEAR (LINEAR is gone since Pillow 10).
# v0.6 also requires iopath<0.1.10 (fvcore 0.1.5 of requirements.txt fits): tools/install_env.sh installs it.
# Known left as is: v0.6's own SemSegEvaluator uses np.int/np.float (gone since numpy 1.24); the
# plugin's evaluator does not use it. Its `launch` needs CUDA: clearclip_d2.engine.launch falls back.
set -euo pipefail

PY="${1:?usage: $0 VENV_PYTHON DEST}"
DEST="${2:?usage: $0 VENV_PYTHON DEST}"
SPEC="${D2_V06_SPEC:-pb1-detectron2==0.6}"
run() { printf '+ %s\n' "$*"; "$@"; }

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
# Its setup.py imports torch, so the metadata is prepared in this venv, not in an isolated one.
run "$PY" -m pip download --no-deps --no-build-isolation --no-binary :all: -d "$WORK" "$SPEC"
run tar -xzf "$WORK"/*.tar.gz -C "$WORK"
SOURCE="$(dirname "$(ls -d "$WORK"/*/detectron2/__init__.py)")"

rm -rf "$DEST.tmp"
mkdir -p "$DEST.tmp"
cp -r "$SOURCE" "$DEST.tmp/detectron2"
"$PY" - "$DEST.tmp/detectron2" <<'PYTHON'
import pathlib, sys

root = pathlib.Path(sys.argv[1])
(root / "_C.py").write_text(
    '"""Stand-in for Detectron2\'s compiled ops (not built): version strings for collect_env."""\n\n\n'
    'def get_compiler_version():\n    return "not compiled"\n\n\n'
    'def get_cuda_version():\n    return "not compiled"\n\n\n'
    'def has_cuda():\n    return False\n'
)
transform = root / "data" / "transforms" / "transform.py"
text = transform.read_text()
if "Image.LINEAR" not in text:
    sys.exit(f"{transform}: no Image.LINEAR to patch; is this Detectron2 v0.6?")
transform.write_text(text.replace("Image.LINEAR", "Image.BILINEAR"))
PYTHON
rm -rf "$DEST"
mv "$DEST.tmp" "$DEST"

SITE_PACKAGES="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "+ echo $DEST > $SITE_PACKAGES/detectron2_v06.pth"
echo "$DEST" > "$SITE_PACKAGES/detectron2_v06.pth"
"$PY" -c 'import detectron2; assert detectron2.__version__ == "0.6", detectron2.__version__; print("Detectron2", detectron2.__version__, "from", detectron2.__file__)'
