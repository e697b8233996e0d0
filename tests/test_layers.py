"""The layering, read from the code (every import, function-level ones too): each layer imports only the layers
below it, and the parts of one layer not each other.

    3  placeid_cli (the command-line tool), bench (benchmarks)
    2  training (the training job), functions/* (the deployed adapters), placeid.local (emulator stack, bridge,
       packaging: local-only tooling)
    1  placeid (the cloud domain: ingest, review, catalog, registry, serving, predict_http, ...)
    0  placeid_edge (the inference core: decoding, preprocessing, bundles, runtimes)
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from placeid.config import REPO_ROOT

#: (layer, part) of each top-level package or sub-package, most specific first.
PARTS = [("placeid_edge", 0, "edge core"), ("placeid.local", 2, "local tooling"), ("placeid", 1, "domain"),
         ("training", 2, "training"), ("functions", 2, "functions"), ("placeid_cli", 3, "command line"),
         ("bench", 3, "benchmarks")]
SOURCES = {"placeid_edge": REPO_ROOT / "edge" / "placeid_edge", "placeid": REPO_ROOT / "placeid",
           "training": REPO_ROOT / "training", "functions": REPO_ROOT / "functions",
           "placeid_cli": REPO_ROOT / "placeid_cli", "bench": REPO_ROOT / "bench"}


def part_of(module: str) -> tuple[int, str] | None:
    for prefix, layer, part in PARTS:
        if module == prefix or module.startswith(prefix + "."):
            return layer, part
    return None


def module_name(path: Path) -> str:
    for package, root in SOURCES.items():
        if path.is_relative_to(root):
            parts = path.relative_to(root).with_suffix("").parts
            return ".".join((package, *(p for p in parts if p != "__init__")))
    raise AssertionError(path)


def imported_modules(source: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def source_files() -> list[Path]:
    return sorted(path for root in SOURCES.values() for path in root.rglob("*.py")
                  if "__pycache__" not in path.parts and "provider_schema" not in path.parts)


def violations_of(module: str, source: str) -> list[str]:
    """The imports of ``source`` (the code of ``module``) that point up, or sideways within a layer."""
    own = part_of(module)
    found = []
    for name in sorted(imported_modules(source)):
        other = part_of(name)
        if other is None or other == own:
            continue
        if other[0] > own[0] or (other[0] == own[0] and other[1] != own[1]):
            found.append(f"{module} ({own[1]}, layer {own[0]}) imports {name} ({other[1]}, layer {other[0]})")
    return found


def test_every_source_file_has_a_layer():
    files = source_files()
    assert len(files) > 40
    assert all(part_of(module_name(path)) for path in files)


def test_layers_only_point_down():
    found = [line for path in source_files()
             for line in violations_of(module_name(path), path.read_text(encoding="utf-8"))]
    assert found == []


@pytest.mark.parametrize("source, target", [("placeid/ingest.py", "placeid_cli.main"),
                                             ("edge/placeid_edge/bundle.py", "placeid.serving"),
                                             ("training/dataset.py", "placeid.local.stack"),
                                             ("placeid/review.py", "training.train")])
def test_an_upward_or_sideways_import_is_caught(source, target):
    """The check itself: the same file with one more (function-level) import of a higher or sideways part fails."""
    module, text = module_name(REPO_ROOT / source), (REPO_ROOT / source).read_text(encoding="utf-8")
    assert violations_of(module, text) == []
    assert len(violations_of(module, text + f"\n\ndef _late():\n    import {target}\n")) == 1
