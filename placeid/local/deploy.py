"""What deployment needs from the code: each function's deployable folder (its main.py, pinned
requirements.txt and exactly the core-library modules it imports, vendored in) and Terraform's Firestore
indexes, generated from placeid/store.py."""

from __future__ import annotations

import ast
import json
import shutil
import zipfile
from pathlib import Path

from placeid.config import REPO_ROOT
from placeid.store import COMPOSITE_INDEXES, INDEX_EXEMPTIONS, VECTOR_INDEXES
from placeid_edge.errors import NotFound

FUNCTIONS = ("ingest", "predict")
#: Where each vendored package lives in this repository.
PACKAGE_ROOTS = {"placeid": REPO_ROOT / "placeid", "placeid_edge": REPO_ROOT / "edge" / "placeid_edge"}
#: Package data shipped with a vendored package (the pages; the bundled catalog).
PACKAGE_DATA = {"placeid": ["data/*.html", "data/*.json"]}
#: Package data only one function needs: the predict page's scripts and LiteRT.js (about 25 MB with their gzip twins).
FUNCTION_DATA = {"predict": {"placeid": ["data/web/*.js", "data/web/vendor/*"]}}
INDEXES_FILE = REPO_ROOT / "infra" / "firestore_indexes.tf.json"
_ZIP_TIME = (2020, 1, 1, 0, 0, 0)  # fixed timestamps: the same code gives the same zip (and md5)


def _module_file(name: str) -> Path | None:
    package, _, rest = name.partition(".")
    root = PACKAGE_ROOTS.get(package)
    if root is None:
        return None
    base = root.joinpath(*rest.split(".")) if rest else root
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def _imports(path: Path) -> set[str]:
    """Every module named by an import anywhere in the file (function-level imports included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)  # submodules imported by name
    return names


def vendored_modules(entry: Path) -> list[Path]:
    """The core-library files ``entry`` needs: its imports of placeid/placeid_edge, their imports, and the
    ``__init__.py`` of every package on the way, found by reading the code (nothing is imported)."""
    seen: set[Path] = set()
    pending = [entry]
    while pending:
        for name in _imports(pending.pop()):
            parts = name.split(".")
            for depth in range(1, len(parts) + 1):
                found = _module_file(".".join(parts[:depth]))
                if found and found not in seen:
                    seen.add(found)
                    pending.append(found)
    return sorted(seen)


def _relative(path: Path) -> Path:
    for package, root in PACKAGE_ROOTS.items():
        if path.is_relative_to(root):
            return Path(package) / path.relative_to(root)
    raise ValueError(f"{path} is not in a vendored package")


def package_function(name: str, out_dir: Path) -> Path:
    """Write ``out_dir/<name>/`` (deployable as is: ``gcloud functions deploy --source``) and
    ``out_dir/<name>.zip``; returns the folder."""
    source = REPO_ROOT / "functions" / name
    if not (source / "main.py").is_file():
        raise NotFound(f"{source / 'main.py'} does not exist: run `placeid package` from the repository root")
    if name == "predict":
        from placeid.web_assets import vendor_installed

        if not vendor_installed(PACKAGE_ROOTS["placeid"] / "data" / "web"):  # what is packaged, not what is installed
            raise NotFound("the predict page's offline runtime (LiteRT.js) is not installed: run `make web` "
                           "(python -m placeid.web_assets) before packaging")
    target = out_dir / name
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for file_name in ("main.py", "requirements.txt"):
        shutil.copy2(source / file_name, target / file_name)
    modules = vendored_modules(source / "main.py")
    for module in modules:
        destination = target / _relative(module)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(module, destination)
    for package in {_relative(m).parts[0] for m in modules}:
        for pattern in PACKAGE_DATA.get(package, []) + FUNCTION_DATA.get(name, {}).get(package, []):
            for data_file in PACKAGE_ROOTS[package].glob(pattern):
                destination = target / package / data_file.relative_to(PACKAGE_ROOTS[package])
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(data_file, destination)
    with zipfile.ZipFile(out_dir / f"{name}.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(p for p in target.rglob("*") if p.is_file()):
            info = zipfile.ZipInfo(path.relative_to(target).as_posix(), _ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, path.read_bytes())
    return target


def firestore_indexes_tf() -> dict:
    """Terraform (JSON syntax) for the composite indexes and index exemptions of placeid/store.py."""
    database = "${google_firestore_database.main.name}"
    indexes = {
        f"{index.collection}_{'_'.join(field for field, _ in index.fields)}": {
            "project": "${var.project_id}",
            "database": database,
            "collection": index.collection,
            "fields": [{"field_path": field, "order": order} for field, order in index.fields],
        }
        for index in COMPOSITE_INDEXES
    }
    for index in VECTOR_INDEXES:
        indexes[f"{index.collection}_{'_'.join(index.prefix_fields)}_{index.vector_field}"] = {
            "project": "${var.project_id}",
            "database": database,
            "collection": index.collection,
            "fields": [{"field_path": field, "order": "ASCENDING"} for field in index.prefix_fields] + [
                {"field_path": index.vector_field,
                 "vector_config": {"dimension": f"${{var.{index.dimension_variable}}}", "flat": {}}}],
        }
    exemptions = {
        f"{collection}_{field}": {"project": "${var.project_id}", "database": database,
                                  "collection": collection, "field": field, "index_config": {}}
        for collection, field in INDEX_EXEMPTIONS
    }
    return {"//": "Generated from placeid/store.py by `placeid infra indexes`; do not edit by hand.",
            "resource": {"google_firestore_index": indexes, "google_firestore_field": exemptions}}


def render_indexes() -> str:
    return json.dumps(firestore_indexes_tf(), indent=2) + "\n"
