"""The package's layout: every module imports, no import cycle, config.py imports no modeling
module, and the defaults in constants.py are the ones the modeling code uses."""

import ast
import importlib
import os
import pkgutil
from typing import Dict, List, Set

import pytest

import clearclip_d2
from clearclip_d2 import checks, constants

PACKAGE = "clearclip_d2"
PACKAGE_DIR = os.path.dirname(os.path.abspath(clearclip_d2.__file__))


def module_files() -> Dict[str, str]:
    """Dotted name -> file of every module of the package (a package is its ``__init__``)."""
    files = {}
    for root, _, names in os.walk(PACKAGE_DIR):
        for name in names:
            if not name.endswith(".py"):
                continue
            relative = os.path.relpath(os.path.join(root, name), os.path.dirname(PACKAGE_DIR))
            parts = relative[: -len(".py")].split(os.sep)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            files[".".join(parts)] = os.path.join(root, name)
    return files


def imported_modules(module: str, path: str, known: Set[str]) -> Set[str]:
    """Package modules that ``module`` imports anywhere in its file (module level and inside
    functions): ``import clearclip_d2.x``, ``from clearclip_d2.x import y``, ``from .x import y``,
    ``from .. import x``. ``from a import b`` counts as an import of ``a.b`` when ``b`` is a module."""
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), filename=path)):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            submodules = {f"{source}.{alias.name}" for alias in node.names} & known
            targets.update(submodules or {source})
    return {target for target in targets if target in known and target != module}


def import_graph() -> Dict[str, Set[str]]:
    files = module_files()
    return {module: imported_modules(module, path, set(files)) for module, path in files.items()}


def find_cycle(graph: Dict[str, Set[str]]) -> List[str]:
    """One cycle of ``graph`` as [a, b, ..., a], or [] if it is acyclic (depth-first search)."""
    state: Dict[str, str] = {}
    stack: List[str] = []

    def visit(node: str) -> List[str]:
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return stack[stack.index(target) :] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        state[node] = "done"
        stack.pop()
        return []

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return []


def test_every_module_imports():
    for info in pkgutil.walk_packages(clearclip_d2.__path__, PACKAGE + "."):
        importlib.import_module(info.name)


def test_no_import_cycle_between_package_modules():
    graph = import_graph()
    assert "clearclip_d2.modeling.refinement.masks" in graph and graph["clearclip_d2.modeling.meta_arch"]
    cycle = find_cycle(graph)
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_relative_imports_resolve_to_package_modules(tmp_path):
    known = {"p", "p.a", "p.a.b", "p.c"}
    source = tmp_path / "b.py"
    source.write_text("from ..c import x\ndef f():\n    from . import b\n    from .. import c\n")
    assert imported_modules("p.a.b", str(source), known) == {"p.c"}
    source.write_text("def f():\n    from ...p import a\n")
    assert imported_modules("p.a.b", str(source), known) == {"p.a"}


def test_config_imports_nothing_from_modeling():
    graph = import_graph()
    assert not {m for m in graph[f"{PACKAGE}.config"] if m.startswith(f"{PACKAGE}.modeling")}
    assert graph[f"{PACKAGE}.config"] <= {f"{PACKAGE}.{name}" for name in ("checks", "constants", "utils.errors", "data.vocabulary")}


def test_checks_import_only_constants_and_utils():
    assert import_graph()[f"{PACKAGE}.checks"] <= {f"{PACKAGE}.constants", f"{PACKAGE}.utils.errors"}


def test_modeling_takes_its_names_from_constants():
    from clearclip_d2.modeling.clip.decomposition import ATTENTION_VARIANTS
    from clearclip_d2.modeling.clip.precision import PRECISIONS
    from clearclip_d2.modeling.refinement.pamr import PAMRRefiner

    assert tuple(ATTENTION_VARIANTS) == constants.ATTENTION_VARIANT_NAMES
    assert tuple(PRECISIONS) == constants.PRECISION_NAMES
    refiner = PAMRRefiner()
    assert (refiner.iterations, refiner.dilations) == (constants.PAMR_DEFAULT_ITERATIONS, constants.PAMR_DEFAULT_DILATIONS)


def test_the_modeling_checks_are_registered_for_check_clearclip_config():
    from clearclip_d2.modeling.clip.loading import check_weights_config
    from clearclip_d2.modeling.refinement.masks import check_mask_model_config

    assert {check_weights_config, check_mask_model_config} <= set(checks.registered_config_checks())


@pytest.mark.parametrize(
    "check, args, fragment",
    [
        (checks.check_input_format, ("YUV",), "INPUT.FORMAT 'YUV' is not supported; use RGB or BGR"),
        (checks.check_sliding_window, (448, 0, 8), "SLIDE_STRIDE 0"),
        (checks.check_class_chunking, (0, 1), "CLASS_CHUNK 0 must be > 0"),
        (checks.check_prob_threshold, (1.5,), "PROB_THRESHOLD 1.5 must be in [0, 1]"),
        (checks.check_attention, ("naclip", 0.0), "NACLIP_GAUSSIAN_STD 0.0 must be > 0"),
        (checks.check_refine, ("pamr", 0, [8]), "PAMR_ITERATIONS 0 must be >= 1"),
        (checks.check_mask_min_score, (2.0,), "MASK_MIN_SCORE 2.0 must be in [0, 1]"),
    ],
)
def test_each_check_names_the_key(check, args, fragment):
    with pytest.raises(clearclip_d2.ClearCLIPError) as error:
        check(*args)
    assert fragment in str(error.value)
