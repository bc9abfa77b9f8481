"""The exactness suite under open_clip's next major version (a snapshot of its main branch).

Runs :data:`EXACTNESS_TESTS` in one subprocess with the snapshot's ``src`` first on
``PYTHONPATH``. The snapshot is looked for at ``../shared/upstream/open_clip-main/src`` next
to the repository (where CI has it), or where ``CLEARCLIP_D2_OPEN_CLIP_NEXT`` points; the test
is skipped when it is not there. ``pytest -m "not open_clip_next"`` leaves it out.
"""

import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

EXACTNESS_TESTS = [
    "tests/test_modeling_exactness.py",
    "tests/test_attention_variants.py",
    "tests/test_attention_adapter.py",
    "tests/test_clip_loading.py",
    "tests/test_backbones.py",
]
SNAPSHOT_SRC = os.environ.get("CLEARCLIP_D2_OPEN_CLIP_NEXT") or os.path.join(
    REPO_ROOT, os.pardir, "shared", "upstream", "open_clip-main", "src"
)

# Checks that the snapshot, not the installed open_clip, is imported, then runs the tests.
RUNNER = """
import os, sys, open_clip, pytest
src = os.path.realpath(sys.argv[1])
if not os.path.realpath(open_clip.__file__).startswith(src + os.sep):
    sys.exit(f"imported {open_clip.__file__}, not the snapshot in {src}")
print(f"open_clip {open_clip.__version__} from {src}", flush=True)
sys.exit(pytest.main(["-q", "-x", "-p", "no:cacheprovider", *sys.argv[2:]]))
"""


@pytest.mark.open_clip_next
@pytest.mark.skipif(not os.path.isdir(os.path.join(SNAPSHOT_SRC, "open_clip")), reason="no open_clip main snapshot")
def test_exactness_suite_passes_under_open_clip_next():
    python_path = os.pathsep.join(p for p in (SNAPSHOT_SRC, REPO_ROOT, os.environ.get("PYTHONPATH")) if p)
    result = subprocess.run(
        [sys.executable, "-c", RUNNER, SNAPSHOT_SRC, *EXACTNESS_TESTS],
        cwd=REPO_ROOT,
        env=dict(os.environ, PYTHONPATH=python_path),
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
