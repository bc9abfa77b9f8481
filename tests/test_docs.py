"""The documents name only things that exist, so README.md and docs/ cannot drift from the code.

Checked in README.md, docs/*.md, datasets/README.md and the comments of configs/**/*.yaml:

* repository paths (``configs/...``, ``tools/...``, ``docs/...``, ``clearclip_d2/...``, ``tests/...``,
  ``datasets/<file>``; globs must match, ``{a,b}`` and ``[optional/]`` are expanded);
* Markdown links to repository files and their ``#section`` anchors;
* ``make <target>`` and ``make VAR=...`` inside code: the target and the variable are in the Makefile;
* ``--flags`` after ``tools/X.py`` or ``datasets/X.py`` inside code: in that script's ``--help``;
  a code span that is only a flag (`` `--resume-eval` ``): in some script's ``--help``;
* config keys (``MODEL.CLEARCLIP.X``, ``INPUT.X``, ...): in Detectron2's config with
  ``add_clearclip_config``;
* Python names (``clearclip_d2.module.name``): importable.
"""

import functools
import glob
import importlib
import os
import re
import shlex
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

DOCUMENTS = sorted(
    os.path.relpath(path, REPO_ROOT)
    for path in [os.path.join(REPO_ROOT, "README.md"), os.path.join(REPO_ROOT, "datasets", "README.md"),
                 *glob.glob(os.path.join(REPO_ROOT, "docs", "*.md"))]
)
CONFIGS = sorted(
    os.path.relpath(path, REPO_ROOT) for path in glob.glob(os.path.join(REPO_ROOT, "configs", "**", "*.yaml"), recursive=True)
)

# A repository path: a known top folder (datasets/ only for its own files), or a top-level file;
# optionally with a Markdown #anchor. Not preceded by a path character (".venv/bin/x", "$HOME/tools/").
PATH = re.compile(
    r"(?<![\w./$~-])((?:(?:configs|tools|docs|clearclip_d2|tests)/(?:[\w./*{},<>-]|\[[\w./-]*\])*|datasets/[\w.-]+"
    r"|README\.md|Makefile|setup\.py|requirements\.txt)(?:#[\w-]+)?)"
)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
CODE_SPAN = re.compile(r"`([^`\n]+)`")
SCRIPT = re.compile(r"(?<![\w/-])((?:tools|datasets)/\w+\.py)")
FLAG = re.compile(r"(?<![\w-])(--[a-z][\w-]*)")
MAKE = re.compile(r"(?<![\w/.-])make((?:\s+(?:[A-Za-z_][\w-]*=(?:\"[^\"]*\"|'[^']*'|\S*)|[a-z][\w-]*))*)")
CONFIG_KEY = re.compile(r"(?<![\w.])((?:MODEL|INPUT|DATASETS|DATALOADER|SOLVER|TEST)(?:\.[A-Z0-9_]*[A-Z0-9])+)(?![\w*])")
PYTHON_NAME = re.compile(r"(?<![\w./])(clearclip_d2(?:\.[A-Za-z_]\w*)+)")


def expand(path):
    """``a/{b,c}/[d/]e`` -> every spelled-out alternative."""
    brace = re.search(r"\{([^{}]*)\}", path)
    if brace:
        return [p for option in brace.group(1).split(",") for p in expand(path[:brace.start()] + option + path[brace.end():])]
    optional = re.search(r"\[([^\[\]]*)\]", path)
    if optional:
        return [p for option in (optional.group(1), "") for p in expand(path[:optional.start()] + option + path[optional.end():])]
    return [path]


def heading_anchors(markdown):
    """GitHub's anchors of the Markdown headings (outside code blocks)."""
    anchors = set()
    for line in FENCE.sub("", markdown).splitlines():
        heading = re.match(r"#{1,6}\s+(.*)", line)
        if heading:
            anchors.add(re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-"))
    return anchors


def code_texts(markdown):
    """Each fenced block (backslash continuations joined, one command a line) and each code span."""
    blocks = [block.replace("\\\n", " ") for block in FENCE.findall(markdown)]
    return [line for block in blocks for line in block.splitlines()] + CODE_SPAN.findall(FENCE.sub("", markdown))


@functools.lru_cache(maxsize=None)
def script_flags(script):
    """The flags of ``python <script> --help`` (run in a subprocess: tools are not imported)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [REPO_ROOT, os.environ.get("PYTHONPATH")])))
    result = subprocess.run([sys.executable, script, "--help"], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{script} --help failed: {result.stderr[-2000:]}"
    return frozenset(FLAG.findall(result.stdout))


@functools.lru_cache(maxsize=None)
def makefile_names():
    """(targets, variables) of the Makefile."""
    with open(os.path.join(REPO_ROOT, "Makefile")) as f:
        text = f.read()
    targets = set(re.findall(r"^([\w.-]+)\s*:(?!=)", text, re.M))
    variables = set(re.findall(r"^(\w+)\s*[?:+]?=", text, re.M))
    return targets, variables


@functools.lru_cache(maxsize=None)
def full_config():
    from detectron2.config import get_cfg

    from clearclip_d2 import add_clearclip_config

    cfg = get_cfg()
    add_clearclip_config(cfg)
    return cfg


def config_key_exists(key):
    node = full_config()
    for part in key.split("."):
        if not hasattr(node, "keys") or part not in node:
            return False
        node = node[part]
    return True


def python_name_exists(dotted):
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for attribute in parts[split:]:
            if not hasattr(obj, attribute):
                return False
            obj = getattr(obj, attribute)
        return True
    return False


def repository_target_problem(target, base_dir):
    """None if ``target`` (``path[#anchor]``, relative to ``base_dir`` in the repository) exists."""
    path, _, anchor = target.partition("#")
    full = os.path.normpath(os.path.join(REPO_ROOT, base_dir, path))
    if "*" in path:
        return None if glob.glob(full) else f"no file matches {target}"
    if not os.path.exists(full):
        return f"{target} does not exist"
    if anchor and full.endswith(".md"):
        with open(full) as f:
            if anchor not in heading_anchors(f.read()):
                return f"{target}: no section #{anchor} in {os.path.relpath(full, REPO_ROOT)}"
    return None


def find_problems(text, doc_path, flags_of=script_flags):
    """Every name in ``text`` (a document at ``doc_path``, relative to the repository) that does
    not exist, as one message each."""
    problems = []
    doc_dir = os.path.dirname(doc_path)
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue
        if target.startswith("#"):
            problems.append(None if target[1:] in heading_anchors(text) else f"{target}: no such section here")
        else:
            problems.append(repository_target_problem(target, doc_dir))
    for match in PATH.findall(text):
        path = match.rstrip(".,:;")
        if "<" in path:  # a pattern such as configs/<group>/<stem>.yaml
            continue
        problems.extend(repository_target_problem(p, "") for p in expand(path))
    for code in code_texts(text):
        pieces = SCRIPT.split(code)  # [before, script, its arguments, script, its arguments, ...]
        for script, arguments in zip(pieces[1::2], pieces[2::2]):
            if os.path.exists(os.path.join(REPO_ROOT, script)):
                known = flags_of(script)
                problems.extend(f"{script} has no flag {flag}" for flag in FLAG.findall(arguments) if flag not in known)
        if re.fullmatch(r"--[a-z][\w-]*(\s.*)?", code):
            flag = code.split()[0]
            scripts = [os.path.relpath(path, REPO_ROOT) for folder in ("tools", "datasets")
                       for path in sorted(glob.glob(os.path.join(REPO_ROOT, folder, "*.py")))]  # no root_dir: Python 3.9
            if not any(flag in flags_of(script) for script in scripts):
                problems.append(f"no script has the flag {flag}")
        for words in MAKE.findall(code):
            targets, variables = makefile_names()
            for word in shlex.split(words):
                name, assigns, _ = word.partition("=")
                if assigns:
                    problems.append(None if name in variables else f"the Makefile has no variable {name}")
                else:
                    problems.append(None if word in targets else f"the Makefile has no target {word}")
    problems.extend(f"no config key {key}" for key in CONFIG_KEY.findall(text) if not config_key_exists(key))
    problems.extend(f"{name} cannot be imported" for name in PYTHON_NAME.findall(text) if not python_name_exists(name))
    return sorted(set(filter(None, problems)))


def read(relative_path):
    with open(os.path.join(REPO_ROOT, relative_path)) as f:
        return f.read()


@pytest.fixture(scope="module", autouse=True)
def scripts_help_in_parallel():
    """Start every named script's ``--help`` at once (they import torch: seconds each)."""
    named = sorted({s for doc in DOCUMENTS for code in code_texts(read(doc)) for s in SCRIPT.findall(code)})
    named = [s for s in named if os.path.exists(os.path.join(REPO_ROOT, s))]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(script_flags, named))


@pytest.mark.parametrize("doc", DOCUMENTS)
def test_document_names_only_existing_files_flags_targets_keys_and_sections(doc):
    assert find_problems(read(doc), doc) == []


def test_config_comments_point_to_existing_files_and_sections():
    problems = {}
    for config in CONFIGS:
        comments = "\n".join(line for line in read(config).splitlines() if line.lstrip().startswith("#"))
        problems[config] = find_problems(comments, config)
    assert {config: p for config, p in problems.items() if p} == {}


def test_readme_stays_short():
    assert len(read("README.md").splitlines()) <= 200


def test_the_checker_finds_what_does_not_exist():
    doc = "\n".join([
        "# Title",
        "See [the guide](docs/NO_SUCH_GUIDE.md), [a section](#no-such-section) and `configs/no_such_config.yaml`.",
        "```bash",
        "python tools/demo.py --config-file configs/clearclip_coco.yaml \\",
        "    --no-such-flag 3",
        "make no-such-target NO_SUCH_VARIABLE=1",
        "```",
        "Pass `--no-such-loose-flag` and set `MODEL.CLEARCLIP.NO_SUCH_KEY`; call `clearclip_d2.no_such_module`.",
    ])
    assert find_problems(doc, "docs/X.md") == sorted([
        "docs/NO_SUCH_GUIDE.md does not exist",
        "#no-such-section: no such section here",
        "configs/no_such_config.yaml does not exist",
        "tools/demo.py has no flag --no-such-flag",
        "the Makefile has no target no-such-target",
        "the Makefile has no variable NO_SUCH_VARIABLE",
        "no script has the flag --no-such-loose-flag",
        "no config key MODEL.CLEARCLIP.NO_SUCH_KEY",
        "clearclip_d2.no_such_module cannot be imported",
    ])


def test_the_checker_accepts_what_exists_and_finds_a_missing_section():
    doc = "\n".join([
        "See [install](docs/GETTING_STARTED.md#installation), [nothing](docs/GETTING_STARTED.md#no-such-section),",
        "`configs/vit_l14/clearclip_{voc20,coco}.yaml` and `configs/[vit_l14/]clearclip_coco.yaml`.",
        "```bash",
        "python tools/demo.py --config-file configs/clearclip_coco.yaml --vocabulary 'cat; dog' --opts MODEL.DEVICE cpu",
        "make demo WEIGHTS=/w.bin",
        "```",
        "`--resume-eval`, `MODEL.CLEARCLIP.ATTENTION`, `clearclip_d2.add_clearclip_config`.",
    ])
    assert find_problems(doc, "README.md") == [
        "docs/GETTING_STARTED.md#no-such-section: no section #no-such-section in docs/GETTING_STARTED.md"
    ]
