"""The files the predict page loads, each under a fixed URL: the page's own scripts (placeid/data/web/, in the
repository) and the runtime it answers offline with, LiteRT.js (npm ``@litertjs/core``, pinned in
web/package.json and web/package-lock.json, Apache-2.0). The runtime is installed at build time, never fetched from
a CDN at run time:

    python -m placeid.web_assets              # npm ci in web/, then copies the files below into
                                              # placeid/data/web/vendor/ of this checkout
    python -m placeid.web_assets --copy-only  # only the copy, from a web/node_modules installed before

(``make web``; ``make setup``, ``make test`` and ``make package`` run it). They are served under /assets/ (Flask,
and so functions-framework, keeps /static/ for itself). No URL is ever turned into a path: a request names a key of
:func:`static_files`, or nothing is served.
"""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

from placeid.config import REPO_ROOT

WEB_DIR = REPO_ROOT / "web"
#: Served name under /assets/vendor/litert/ -> the file in web/node_modules/@litertjs/.
VENDOR_FILES = {
    "core.js": "core/dist/index.js",
    "wasm-utils.js": "wasm-utils/dist/index.js",
    # LiteRT.js picks one pair by what the browser supports (relaxed SIMD, or not) and loads it from the folder.
    "litert_wasm_internal.js": "core/wasm/litert_wasm_internal.js",
    "litert_wasm_internal.wasm": "core/wasm/litert_wasm_internal.wasm",
    "litert_wasm_compat_internal.js": "core/wasm/litert_wasm_compat_internal.js",
    "litert_wasm_compat_internal.wasm": "core/wasm/litert_wasm_compat_internal.wasm",
}
#: The npm packages those files come from (their licences are listed in README, Licences).
VENDOR_PACKAGES = ("@litertjs/core", "@litertjs/wasm-utils")
MIME_TYPES = {".js": "text/javascript", ".wasm": "application/wasm"}


def _web_data() -> Path:
    return Path(str(resources.files("placeid") / "data" / "web"))


def static_files() -> dict[str, tuple[Path, str]]:
    """URL path -> (file, content type) for everything the page loads besides itself."""
    web = _web_data()
    files = {"/sw.js": (web / "sw.js", MIME_TYPES[".js"]),
             "/assets/page.js": (web / "page.js", MIME_TYPES[".js"]),
             "/assets/offline.js": (web / "offline.js", MIME_TYPES[".js"])}
    for name in VENDOR_FILES:
        files[f"/assets/vendor/litert/{name}"] = (web / "vendor" / name, MIME_TYPES[Path(name).suffix])
    return files


def vendor_installed(web_data: Path | None = None) -> bool:
    """Whether the runtime's files are in ``web_data`` (default: this package's data/web/), as
    ``python -m placeid.web_assets`` puts them."""
    return all(((web_data or _web_data()) / "vendor" / name).is_file() for name in VENDOR_FILES)


def install(web_dir: Path = WEB_DIR, quiet: bool = True, run_npm: bool = True) -> Path:
    """``npm ci`` in ``web_dir`` (the lock file's exact versions; skipped when not ``run_npm``), then copy
    :data:`VENDOR_FILES` into this checkout's placeid/data/web/vendor/ (what the functions are packaged from) with a
    ``versions.json`` of the packages they came from. Returns that folder."""
    if run_npm:
        npm = shutil.which("npm")
        if npm is None:
            raise SystemExit("npm is missing: the page's offline mode needs Node.js and npm at build time "
                             "(Debian: apt-get install nodejs npm)")
        command = [npm, "ci", "--no-audit", "--no-fund"] + (["--silent"] if quiet else [])
        subprocess.run(command, cwd=web_dir, check=True)
    modules = web_dir / "node_modules" / "@litertjs"
    if not modules.is_dir():
        raise SystemExit(f"{modules} is missing: run `npm ci` in {web_dir} first")
    target = REPO_ROOT / "placeid" / "data" / "web" / "vendor"
    target.mkdir(parents=True, exist_ok=True)
    for name, source in VENDOR_FILES.items():
        shutil.copyfile(modules / source, target / name)
        # Served to browsers that accept gzip (all do): the WebAssembly is 9.4 MB, 2.8 MB gzipped.
        with open(modules / source, "rb") as raw, gzip.GzipFile(target / f"{name}.gz", "wb", mtime=0) as packed:
            shutil.copyfileobj(raw, packed)
    versions = {}
    for package in VENDOR_PACKAGES:
        meta = json.loads((web_dir / "node_modules" / package / "package.json").read_text())
        versions[package] = {"version": meta["version"], "license": meta.get("license")}
    (target / "versions.json").write_text(json.dumps(versions, indent=1) + "\n")
    return target


if __name__ == "__main__":
    folder = install(quiet="--verbose" not in sys.argv, run_npm="--copy-only" not in sys.argv)
    print(f"LiteRT.js for the page's offline mode: {folder}")
