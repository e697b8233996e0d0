"""Infrastructure as code and the pipeline, checked offline: terraform fmt, every .tf file parses, checkov
passes (skips carry a written reason), the Firestore indexes match the code, cloudbuild.yaml matches Cloud
Build's schema and runs only what this repository has, and the packaged functions are what gets deployed."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import hcl2
import pytest
import yaml

from placeid.cli import build_parser
from placeid.config import REPO_ROOT
from placeid.deploy import FUNCTIONS, INDEXES_FILE, package_function, render_indexes, vendored_modules
from placeid.store import COMPOSITE_INDEXES

INFRA = REPO_ROOT / "infra"
TOOLS_VENV = Path(os.environ.get("PLACEID_TOOLS_VENV", REPO_ROOT / ".venv-tools"))


def terraform_files() -> list[Path]:
    return sorted(INFRA.glob("*.tf"))


def _plain(value):
    """python-hcl2 keeps HCL's quotes around strings and block labels: drop them."""
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items() if k != "__is_block__"}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def parsed() -> dict[str, dict]:
    return {path.name: _plain(hcl2.loads(path.read_text())) for path in terraform_files()}


def test_terraform_fmt():
    terraform = shutil.which("terraform")
    if not terraform:
        pytest.fail("terraform is not installed: `terraform fmt -check` needs it (Terraform 1.5+)")
    result = subprocess.run([terraform, "fmt", "-check", "-diff", "-recursive", str(INFRA)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_tf_file_parses_and_variables_are_documented():
    documents = parsed()
    assert {"main.tf", "variables.tf", "outputs.tf", "versions.tf", "storage.tf", "functions.tf", "iam.tf",
            "training.tf", "firestore.tf"} <= set(documents)
    variables = {name: body for block in documents["variables.tf"]["variable"] for name, body in block.items()}
    assert all(body.get("description") for body in variables.values())
    outputs = {name: body for block in documents["outputs.tf"]["output"] for name, body in block.items()}
    assert all(body.get("description") for body in outputs.values())
    used = set()
    for path in terraform_files():
        used |= set(re.findall(r"\bvar\.([a-z_]+)", path.read_text()))
    used |= set(re.findall(r"\bvar\.([a-z_]+)", INDEXES_FILE.read_text()))
    assert used <= set(variables), f"undeclared variables: {used - set(variables)}"
    assert set(variables) - used == set(), f"unused variables: {set(variables) - used}"


def resources(kind: str) -> dict[str, dict]:
    found = {}
    for document in parsed().values():
        for block in document.get("resource", []):
            found.update(block.get(kind, {}))
    return found


def test_the_deployment_has_what_the_product_needs():
    buckets = resources("google_storage_bucket")
    assert {"raw", "curated", "models"} <= set(buckets)
    for bucket in buckets.values():
        assert bucket["uniform_bucket_level_access"] is True and bucket["public_access_prevention"] == "enforced"
    assert buckets["models"]["versioning"][0]["enabled"] is True
    assert any(rule["action"][0]["type"] == "Delete" for rule in buckets["raw"]["lifecycle_rule"])

    functions = resources("google_cloudfunctions2_function")
    ingest, predict = functions["ingest"], functions["predict"]
    trigger = ingest["event_trigger"][0]
    assert trigger["event_type"] == "google.cloud.storage.object.v1.finalized"
    assert trigger["retry_policy"] == "RETRY_POLICY_RETRY"
    for function in (ingest, predict):
        service = function["service_config"][0]
        assert {"available_memory", "timeout_seconds", "min_instance_count", "max_instance_count",
                "max_instance_request_concurrency", "service_account_email"} <= set(service)
    assert ingest["service_config"][0]["service_account_email"] != predict["service_config"][0]["service_account_email"]

    invokers = resources("google_cloud_run_service_iam_member")["predict_invokers"]
    assert "var.predict_invokers" in invokers["for_each"] and "allUsers" in invokers["for_each"]
    assert "var.predict_public" in invokers["for_each"]  # allUsers only when asked for
    assert "google_artifact_registry_repository" in json.dumps(parsed()["training.tf"])
    job = resources("google_cloud_run_v2_job")["training"]
    assert job["template"][0]["template"][0]["service_account"]
    # No primitive roles anywhere.
    roles = re.findall(r'"(roles/[a-zA-Z.]+)"', "".join(p.read_text() for p in terraform_files()))
    assert roles and not {"roles/owner", "roles/editor", "roles/viewer"} & set(roles)


def test_firestore_indexes_are_generated_from_the_code():
    assert INDEXES_FILE.read_text() == render_indexes(), "run `placeid infra indexes`"
    generated = json.loads(INDEXES_FILE.read_text())["resource"]
    assert len(generated["google_firestore_index"]) == len(COMPOSITE_INDEXES)
    assert generated["google_firestore_field"]["near_bands_members"]["index_config"] == {}


def test_checkov_passes_with_reasons_for_every_skip():
    checkov = TOOLS_VENV / "bin" / "checkov"
    if not checkov.exists():
        pytest.fail(f"no {checkov}: `make test` installs checkov in {TOOLS_VENV}")
    result = subprocess.run([str(checkov), "--directory", str(INFRA), "--framework", "terraform", "--output", "json",
                             "--quiet", "--skip-download", "--compact"], capture_output=True, text=True, timeout=600,
                            env={**os.environ, "BC_SKIP_MAPPING": "TRUE"})
    report = json.loads(result.stdout)
    summary = report["summary"]
    failed = [(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]]
    assert summary["failed"] == 0 and not failed, failed
    assert summary["parsing_errors"] == 0 and summary["passed"] > 50
    skips = re.findall(r"#checkov:skip=([A-Z0-9_]+)(?::(.*))?", "".join(p.read_text() for p in terraform_files()))
    assert skips and all(reason and len(reason.strip()) > 20 for _, reason in skips), skips
    assert summary["skipped"] == len(skips)  # every skip is one written in the code


def cloudbuild() -> dict:
    return yaml.safe_load((REPO_ROOT / "cloudbuild.yaml").read_text())


def test_cloudbuild_matches_the_schema():
    result = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.cloudbuild",
                             str(REPO_ROOT / "cloudbuild.yaml")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def _commands(step: dict) -> list[list[str]]:
    """The shell commands a step runs, split into words."""
    args = step.get("args", [])
    if step.get("entrypoint") == "bash":
        script = args[args.index("-c") + 1]
        return [shlex.split(part) for part in re.split(r"&&|;|\bthen\b|\belse\b|\bfi\b", script) if part.strip()]
    return [[step.get("entrypoint", "")] + args]


def test_cloudbuild_runs_only_what_the_repository_has():
    config = cloudbuild()
    step_ids = [step["id"] for step in config["steps"]]
    assert len(step_ids) == len(set(step_ids))
    for step in config["steps"]:
        assert re.search(r":\d+(\.\d+)+", step["name"]), f"{step['id']}: image {step['name']} is not pinned"
        for wait in step.get("waitFor", []):
            assert wait == "-" or wait in step_ids
    makefile = (REPO_ROOT / "Makefile").read_text()
    parser = build_parser()
    for step in config["steps"]:
        for words in _commands(step):
            if words[0] == "make":
                for target in [w for w in words[1:] if "=" not in w]:
                    assert re.search(rf"^{re.escape(target)}:", makefile, re.M), f"no make target {target}"
            elif words[0] == "placeid":
                parser.parse_args(words[1:])  # exits on an unknown command or option
            elif words[0] == "pip":
                for word in words[1:]:
                    if word.startswith("./") or word == ".":
                        assert (REPO_ROOT / word).exists()
            for word in words:
                for flag in ("--source=", "--file="):
                    if word.startswith(flag):
                        path = word[len(flag):]
                        produced = path.startswith("dist/") and Path(path).name in FUNCTIONS  # by `placeid package`
                        assert produced or (REPO_ROOT / path).exists(), f"{step['id']}: {path} does not exist"
    used = set(re.findall(r"\$\{(_[A-Z_]+)\}", (REPO_ROOT / "cloudbuild.yaml").read_text()))
    assert used == set(config["substitutions"])


@pytest.fixture(scope="module")
def packaged(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    for name in FUNCTIONS:
        package_function(name, out)
    return out


def test_packaged_functions_vendor_what_they_import(packaged):
    predict = {p.relative_to(packaged / "predict").as_posix() for p in (packaged / "predict").rglob("*.py")}
    assert {"main.py", "placeid/predict_http.py", "placeid/serving.py", "placeid_edge/bundle.py",
            "placeid_edge/runtime.py"} <= predict
    assert not any(name.startswith("training/") for name in predict)
    assert "placeid/ingest.py" not in predict and "placeid/cli.py" not in predict
    ingest = {p.relative_to(packaged / "ingest").as_posix() for p in (packaged / "ingest").rglob("*.py")}
    assert {"placeid/ingest.py", "placeid/neardup.py", "placeid_edge/imaging.py"} <= ingest
    assert "placeid/predict_http.py" not in ingest
    assert (packaged / "predict" / "placeid" / "data" / "predict.html").is_file()
    for name in FUNCTIONS:
        requirements = (packaged / name / "requirements.txt").read_text().split()
        assert requirements and all("==" in line for line in requirements), requirements
        assert not any(line.lower().startswith(("tensorflow", "keras")) for line in requirements)
        source = "".join(p.read_text() for p in (packaged / name).rglob("*.py"))
        assert not re.search(r"^\s*(import|from)\s+(tensorflow|keras|training)\b", source, re.M)
    # Found by reading the code, function-level imports included: nothing the predict function imports is missed.
    found = {p.relative_to(REPO_ROOT).as_posix() for p in vendored_modules(REPO_ROOT / "functions" / "predict" / "main.py")}
    assert "placeid/catalog.py" in found  # imported by placeid/serving.py
    assert "edge/placeid_edge/geo.py" in found  # imported by placeid_edge/bundle.py


def test_training_image_copies_what_exists():
    dockerfile = (REPO_ROOT / "training" / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11\.\d+-", dockerfile, re.M)  # pinned
    for sources in re.findall(r"^COPY\s+(.+?)\s+\S+$", dockerfile, re.M):
        for source in sources.split():
            assert (REPO_ROOT / source).exists(), source
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (.+)$", dockerfile, re.M).group(1))
    command = json.loads(re.search(r"^CMD (.+)$", dockerfile, re.M).group(1))
    assert entrypoint[0] == "placeid"
    build_parser().parse_args(entrypoint[1:] + command)


def test_function_pins_agree_with_the_project():
    """A package pinned both in pyproject.toml and a function's requirements.txt has the same version in each,
    so what is tested is what is deployed."""
    project = {}
    for match in re.finditer(r'"([A-Za-z0-9_.-]+)==([^"]+)"', (REPO_ROOT / "pyproject.toml").read_text()):
        project[match.group(1).lower().replace("_", "-")] = match.group(2)
    checked = 0
    for name in FUNCTIONS:
        for line in (REPO_ROOT / "functions" / name / "requirements.txt").read_text().split():
            package, _, version = line.partition("==")
            key = package.lower().replace("_", "-")
            if key in project:
                assert project[key] == version, f"{name}: {line} but pyproject.toml pins {project[key]}"
                checked += 1
    assert checked >= 8
