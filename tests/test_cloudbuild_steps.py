"""The Cloud Build steps that need no cloud, run for real: in cloudbuild.yaml's order, from a clean copy of the
repository (what `gcloud builds submit` uploads: tracked and unignored files), in a fresh virtual environment
that stands in for the step's python image, with the step's own script. A step that works only in a developer's
checkout (an editable install, a file git ignores) fails here."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from placeid.config import REPO_ROOT
from placeid.local.deploy import FUNCTIONS

pytestmark = pytest.mark.slow  # a fresh venv, pip install and the build steps as subprocesses

#: Steps whose image is plain Python or Node.js and which reach nothing outside the build but a package registry
#: (the others need Google Cloud or a Docker daemon; the test step is this suite itself).
LOCAL_STEPS = ("lint", "web", "package")


def clean_copy(destination: Path) -> Path:
    """The files `gcloud builds submit` uploads (it honours .gitignore): tracked and untracked-unignored."""
    listing = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO_ROOT,
                             capture_output=True, check=True, timeout=60).stdout.decode().split("\0")
    for name in filter(None, listing):
        source = REPO_ROOT / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return destination


def step_script(step: dict) -> str:
    assert step.get("entrypoint") == "bash" and step["args"][0] == "-c", f"{step['id']}: expected bash -c"
    assert step["name"].startswith(("python:3.11", "node:20")), \
        f"{step['id']}: this test stands in for a python:3.11 or node:20 image (this machine's Node.js 20 and npm)"
    return step["args"][1]


def run_step(script: str, workspace: Path, venv: Path) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("PYTHON", "VIRTUAL_ENV", "PLACEID_", "PIP_REQUIRE"))}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(venv), HOME=str(workspace.parent))
    return subprocess.run(["bash", "-c", script], cwd=workspace, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def ran_steps(tmp_path_factory) -> tuple[Path, Path, dict[str, subprocess.CompletedProcess]]:
    """The local steps run once, in cloudbuild.yaml's order: (workspace, venv, step id -> result)."""
    root = tmp_path_factory.mktemp("cloudbuild")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    source = clean_copy(root / "workspace")
    steps = [step for step in yaml.safe_load((REPO_ROOT / "cloudbuild.yaml").read_text())["steps"]
             if step["id"] in LOCAL_STEPS]
    assert [step["id"] for step in steps] == list(LOCAL_STEPS)
    results = {}
    for step in steps:
        results[step["id"]] = run_step(step_script(step), source, venv)
        if results[step["id"]].returncode != 0:
            break
    return source, venv, results


def test_local_steps_pass_in_order_from_a_clean_copy(ran_steps):
    source, venv, results = ran_steps
    for step_id in LOCAL_STEPS:
        result = results.get(step_id)
        assert result is not None and result.returncode == 0, \
            f"step {step_id} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}" if result else step_id
    for name in FUNCTIONS:  # what the deploy steps' --source and Terraform's zips point at
        assert (source / "dist" / name / "main.py").is_file() and (source / "dist" / f"{name}.zip").is_file()
    # The predict function carries the page's offline runtime, from npm at build time.
    runtime = source / "dist" / "predict" / "placeid" / "data" / "web" / "vendor" / "litert_wasm_internal.wasm"
    assert runtime.read_bytes()[:4] == b"\0asm"
    assert not (source / "dist" / "ingest" / "placeid" / "data" / "web").exists()  # the ingest function has no page
    # Installed non-editable, as in the build: the code and its data files come from site-packages.
    probe = ("import placeid, placeid.predict_http as page, placeid.catalog as catalog\n"
             "print(placeid.__file__)\n"
             "assert '<html' in page._page().lower() and catalog.bundled_catalog_path().is_file()\n")
    installed = subprocess.run([str(venv / "bin" / "python"), "-c", probe], capture_output=True, text=True, cwd="/",
                               timeout=60)
    assert installed.returncode == 0 and "site-packages" in installed.stdout, installed.stdout + installed.stderr


def test_package_outside_the_repository_says_where_to_run_it(ran_steps, tmp_path):
    """Installed non-editable, `placeid package` reads the repository from the working directory."""
    _, venv, results = ran_steps
    assert results["package"].returncode == 0
    result = run_step("placeid package --out dist", tmp_path, venv)
    said = " ".join(result.stdout.split())
    assert result.returncode == 1 and "run `placeid package` from the repository root" in said, said + result.stderr
