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

from placeid_cli.main import build_parser
from placeid.config import REPO_ROOT
from placeid.local.deploy import FUNCTIONS, INDEXES_FILE, package_function, render_indexes, vendored_modules
from placeid.store import COMPOSITE_INDEXES, VECTOR_INDEXES

INFRA = REPO_ROOT / "infra"
TOOLS_VENV = Path(os.environ.get("PLACEID_TOOLS_VENV", REPO_ROOT / ".venv-tools"))


def terraform_files() -> list[Path]:
    return sorted(INFRA.glob("*.tf"))


def _plain(value):
    """python-hcl2 keeps HCL's quotes around strings and block labels: drop them."""
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items() if not k.startswith("__")}  # __is_block__, __comments__
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def parsed() -> dict[str, dict]:
    return {path.name: _plain(hcl2.loads(path.read_text())) for path in terraform_files()}


@pytest.mark.slow  # terraform
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
    variables = {name: body for document in documents.values() for block in document.get("variable", [])
                 for name, body in block.items()}
    assert all(body.get("description") for body in variables.values())
    outputs = {name: body for block in documents["outputs.tf"]["output"] for name, body in block.items()}
    assert all(body.get("description") for body in outputs.values())
    used = set()
    for path in terraform_files():
        used |= set(re.findall(r"\bvar\.([a-z0-9_]+)", path.read_text()))
    used |= set(re.findall(r"\bvar\.([a-z0-9_]+)", INDEXES_FILE.read_text()))
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
    assert len(generated["google_firestore_index"]) == len(COMPOSITE_INDEXES) + len(VECTOR_INDEXES)
    vector = generated["google_firestore_index"]["near_features_model_version_features"]["fields"][-1]
    assert vector["vector_config"] == {"dimension": "${var.near_features_dimension}", "flat": {}}
    assert generated["google_firestore_field"]["near_bands_members"]["index_config"] == {}


@pytest.mark.slow  # checkov
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
    used = set(re.findall(r"\$\{(_[A-Z0-9_]+)\}", (REPO_ROOT / "cloudbuild.yaml").read_text()))
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
    assert "placeid/ingest.py" not in predict and "placeid_cli/main.py" not in predict
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


# -- the first apply and the first build on a fresh project ----------------------------------------------------

#: The API each resource type needs. A resource is created only after google_project_service.apis enabled
#: them (directly or through what it references): a fresh project has almost none on.
RESOURCE_APIS = {
    "google_artifact_registry_repository": "artifactregistry.googleapis.com",
    "google_artifact_registry_repository_iam_member": "artifactregistry.googleapis.com",
    "google_cloud_run_service_iam_member": "run.googleapis.com",
    "google_cloud_run_v2_job": "run.googleapis.com",
    "google_cloud_run_v2_job_iam_member": "run.googleapis.com",
    "google_cloudfunctions2_function": "cloudfunctions.googleapis.com",
    "google_firestore_database": "firestore.googleapis.com",
    "google_firestore_field": "firestore.googleapis.com",
    "google_firestore_index": "firestore.googleapis.com",
    "google_logging_metric": "logging.googleapis.com",
    "google_monitoring_alert_policy": "monitoring.googleapis.com",
    "google_monitoring_notification_channel": "monitoring.googleapis.com",
    "google_project_iam_member": "cloudresourcemanager.googleapis.com",
    "google_project_service_identity": "serviceusage.googleapis.com",
    "google_service_account": "iam.googleapis.com",
    "google_service_account_iam_member": "iam.googleapis.com",
    "google_storage_bucket": "storage.googleapis.com",
    "google_storage_bucket_iam_member": "storage.googleapis.com",
    "google_storage_bucket_object": "storage.googleapis.com",
    "google_storage_project_service_account": "storage.googleapis.com",
    "google_project": "cloudresourcemanager.googleapis.com",
}
#: On in every new project: enabling the others goes through it.
ALWAYS_ON = {"serviceusage.googleapis.com"}
_REFERENCE = re.compile(r"\b((?:data\.)?(?:google|time)_[a-z0-9_]+\.[a-z0-9_]+)")


def terraform_graph() -> tuple[dict[str, dict], dict[str, set[str]]]:
    """Every resource and data source ("type.name", "data.type.name") with its body, and what each refers to
    (references and depends_on), read from the .tf and .tf.json files."""
    bodies: dict[str, dict] = {}
    for document in [*parsed().values(), json.loads(INDEXES_FILE.read_text())]:
        for kind, prefix in (("resource", ""), ("data", "data.")):
            blocks = document.get(kind, [])
            for block in blocks if isinstance(blocks, list) else [blocks]:
                for rtype, named in block.items():
                    for name, body in named.items():
                        bodies[f"{prefix}{rtype}.{name}"] = body
    references = {key: {ref for ref in _REFERENCE.findall(json.dumps(body)) if ref in bodies} - {key}
                  for key, body in bodies.items()}
    return bodies, references


def _reaches(references: dict[str, set[str]], start: str, goal: str) -> bool:
    seen, pending = set(), [start]
    while pending:
        node = pending.pop()
        if node == goal:
            return True
        if node not in seen:
            seen.add(node)
            pending.extend(references.get(node, ()))
    return False


def enabled_apis() -> set[str]:
    main = parsed()["main.tf"]
    return set(main["locals"][0]["services"])


def test_every_resource_waits_for_the_api_it_needs():
    bodies, references = terraform_graph()
    apis = enabled_apis() | ALWAYS_ON
    for key in bodies:
        rtype = key.removeprefix("data.").split(".")[0]
        if not rtype.startswith("google_") or rtype == "google_project_service":
            continue
        assert rtype in RESOURCE_APIS, f"{key}: which API does {rtype} need? add it to RESOURCE_APIS"
        assert RESOURCE_APIS[rtype] in apis, f"{key} needs {RESOURCE_APIS[rtype]}, which main.tf does not enable"
        if RESOURCE_APIS[rtype] not in ALWAYS_ON and not key.startswith("data."):
            assert _reaches(references, key, "google_project_service.apis"), \
                f"{key} may be created before its API is enabled: depend on google_project_service.apis"


def test_the_api_rule_catches_a_resource_created_too_early():
    _, references = terraform_graph()
    assert _reaches(references, "google_service_account.ingest", "google_project_service.apis")
    references["google_service_account.ingest"] = set()  # what removing its depends_on does
    assert not _reaches(references, "google_service_account.ingest", "google_project_service.apis")


def _locals() -> dict:
    return parsed()["main.tf"]["locals"][0]


def test_training_job_starts_from_an_image_that_exists_before_the_first_build():
    job = resources("google_cloud_run_v2_job")["training"]
    container = job["template"][0]["template"][0]["containers"][0]
    assert container["image"] == "${local.training_image}"
    placeholder = _locals()["placeholder_job_image"]
    # Google's public placeholder, not this deployment's registry (empty until Cloud Build pushes the trainer).
    assert placeholder.startswith("us-docker.pkg.dev/cloudrun/container/")
    assert re.fullmatch(r'\$\{var\.training_image != "" \? var\.training_image : local\.placeholder_job_image\}',
                        _locals()["training_image"]), _locals()["training_image"]
    assert "image" in json.dumps(job["lifecycle"][0]["ignore_changes"])  # Cloud Build sets the real image
    # The job mounts the reference data and points placeid at it (weights never resolve into site-packages).
    volume = job["template"][0]["template"][0]["volumes"][0]
    assert volume["gcs"][0]["bucket"] == "${local.data_bucket}" and volume["gcs"][0]["read_only"] is True
    env = container["dynamic"][0]["env"]["for_each"]
    assert 'PLACEID_WEIGHTS = "/data/weights"' in env and 'PLACEID_DATA = "/data/data"' in env, env


def test_ingest_trigger_waits_for_the_eventarc_agent():
    bodies, references = terraform_graph()
    [grant] = [key for key, body in bodies.items() if key.startswith("google_project_iam_member.")
               and body["role"] == "roles/eventarc.serviceAgent"]
    assert "google_project_service_identity.eventarc" in references[grant]
    assert bodies["google_project_service_identity.eventarc"]["service"] == "eventarc.googleapis.com"
    assert _reaches(references, "google_cloudfunctions2_function.ingest", grant)
    assert _reaches(references, "google_cloudfunctions2_function.ingest", "time_sleep.eventarc_agent_propagation")
    assert _reaches(references, "google_cloudfunctions2_function.ingest",
                    "google_project_iam_member.gcs_publishes_events")


def test_functions_build_as_their_own_account():
    functions = resources("google_cloudfunctions2_function")
    for name, function in functions.items():
        build = function["build_config"][0]
        assert build["service_account"] == "${google_service_account.functions_build.id}", name
        assert build["docker_repository"] == "${google_artifact_registry_repository.functions.id}", name
    for step in cloudbuild()["steps"]:
        if step.get("args", [])[:2] == ["functions", "deploy"]:
            flags = " ".join(step["args"])
            assert "--build-service-account=projects/${PROJECT_ID}/serviceAccounts/${_NAME_PREFIX}-fnbuild@" in flags
            assert "--docker-repository=projects/${PROJECT_ID}/locations/${_REGION}/repositories/" \
                   "${_NAME_PREFIX}-functions" in flags


def test_provider_versions_are_pinned_exactly():
    providers = parsed()["versions.tf"]["terraform"][0]["required_providers"][0]
    assert set(providers) >= {"google", "google-beta", "time"}
    assert providers["google"]["version"] == providers["google-beta"]["version"]
    for name, spec in providers.items():
        assert re.fullmatch(r"=\s*\d+\.\d+\.\d+", spec["version"]), f"{name}: {spec['version']} is a range"
    google = tuple(int(part) for part in providers["google"]["version"].strip("= ").split("."))
    assert (6, 2, 0) <= google < (7, 0, 0)  # 6.2 added the job's Cloud Storage volume
    assert "gcs" in parsed()["versions.tf"]["terraform"][0]["backend"][0]  # remote state


def test_logs_bucket_accepts_storage_access_logs():
    grants = resources("google_storage_bucket_iam_member")
    assert any(grant["bucket"] == "${google_storage_bucket.logs.name}" and grant["role"] == "roles/storage.objectCreator"
               and grant["member"] == "group:cloud-storage-analytics@google.com" for grant in grants.values())


def test_artifact_registry_repositories_clean_up_old_images():
    for name, repository in resources("google_artifact_registry_repository").items():
        policies = repository.get("cleanup_policies", [])
        assert {policy["action"] for policy in policies} == {"KEEP", "DELETE"}, name
        assert repository.get("cleanup_policy_dry_run") is False, name


def _data_bucket_rule() -> re.Pattern:
    [variable] = [block["data_bucket"] for block in parsed()["variables.tf"]["variable"] if "data_bucket" in block]
    condition = variable["validation"][0]["condition"]
    return re.compile(re.search(r'regex\("(.+?)", var\.data_bucket\)', condition).group(1).replace("\\\\", "\\"))


@pytest.mark.parametrize("value, valid", [("my-data-bucket", True), ("placeid-p1.data_2", True),
                                          ("gs://my-data-bucket", False), ("my-bucket/data", False), ("B", False)])
def test_data_bucket_is_a_bucket_name_in_terraform_and_cloud_build(value, valid):
    assert bool(_data_bucket_rule().fullmatch(value)) is valid
    fetch = next(step for step in cloudbuild()["steps"] if step["id"] == "fetch-test-data")
    script = fetch["args"][-1].replace("${_DATA_BUCKET}", value)
    result = subprocess.run(["bash", "-c", script.split("&&")[0]], capture_output=True, text=True, timeout=10)
    assert (result.returncode == 0) is (valid or value == "B"), result.stderr  # "B" only breaks GCS's own rule
    assert "gs://${_DATA_BUCKET}" in fetch["args"][-1]


#: Substitutions only a triggered build has; a manual `gcloud builds submit` leaves them empty.
TRIGGER_ONLY = {"COMMIT_SHA", "SHORT_SHA", "REVISION_ID", "BRANCH_NAME", "TAG_NAME", "REPO_NAME", "REPO_FULL_NAME",
                "TRIGGER_NAME", "TRIGGER_BUILD_CONFIG_PATH", "SERVICE_ACCOUNT_EMAIL", "_HEAD_BRANCH", "_BASE_BRANCH",
                "_HEAD_REPO_URL", "_PR_NUMBER"}


def test_cloudbuild_runs_from_a_trigger_and_from_a_manual_submit():
    text = (REPO_ROOT / "cloudbuild.yaml").read_text()
    used = set(re.findall(r"\$\{?([A-Z_][A-Z0-9_]*)", text))
    assert not used & TRIGGER_ONLY, f"only set in triggered builds: {used & TRIGGER_ONLY}"
    assert "trainer:${BUILD_ID}" in text
    config = cloudbuild()
    if any("${" in str(value) for value in config["substitutions"].values()):
        assert config["options"].get("dynamicSubstitutions") is True  # manual builds expand them only then


def test_cloudbuild_leaves_the_functions_iam_to_terraform():
    for step in cloudbuild()["steps"]:
        words = " ".join(step.get("args", []))
        assert "allow-unauthenticated" not in words, f"{step['id']}: gcloud would rewrite the service's IAM policy"


def _terraform_names() -> set[str]:
    """Names Terraform gives (service account emails, buckets, repositories, job), for prefix placeid and
    project p."""
    text = "".join(path.read_text() for path in terraform_files())
    text = text.replace("${local.suffix}", "placeid-p").replace("${var.name_prefix}", "placeid")
    text = re.sub(r"= var\.name_prefix\b", '= "placeid"', text)
    names = set(re.findall(r'(?:name|repository_id) += "(placeid[a-z0-9-]*)"', text))
    names |= {f"{account}@p.iam.gserviceaccount.com"
              for account in re.findall(r'account_id += "(placeid[a-z0-9-]*)"', text)}
    return names


def test_cloudbuild_names_what_terraform_creates():
    text = (REPO_ROOT / "cloudbuild.yaml").read_text()
    rendered = text.replace("${_NAME_PREFIX}", "placeid").replace("${PROJECT_ID}", "p").replace("${_REGION}", "r")
    names = _terraform_names()
    emails = set(re.findall(r"[a-z0-9-]+@p\.iam\.gserviceaccount\.com", rendered))
    assert emails and emails <= names, emails - names
    buckets = set(re.findall(r"placeid-p-[a-z]+", rendered))
    assert buckets <= names | {"placeid-p-data"}, buckets - names
    repositories = set(re.findall(r"/repositories/([a-z0-9-]+)", rendered)) | set(
        re.findall(r"docker\.pkg\.dev/p/([a-z0-9-]+)/", rendered))
    assert repositories and repositories <= names, repositories - names
    jobs = set(re.findall(r"jobs (?:update|execute) ([a-z0-9-]+)", rendered))
    assert jobs and jobs <= names, jobs - names


def test_build_account_may_read_the_source_it_is_given():
    grants = resources("google_storage_bucket_iam_member")
    build_reads = {grant["bucket"] for grant in grants.values()
                   if grant["member"] == "${google_service_account.build.member}"}
    assert "${google_storage_bucket.build.name}" in build_reads  # --gcs-source-staging-dir
    assert "${local.data_bucket}" in build_reads  # _DATA_BUCKET, always (not only when a variable is set)
    readme = (INFRA / "README.md").read_text()
    assert "--gcs-source-staging-dir=gs://" in readme


def _mib(quantity: str) -> float:
    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)(Mi|Gi|M|G)", quantity).groups()
    return float(number) * {"Mi": 1, "Gi": 1024, "M": 1e6 / 2**20, "G": 1e9 / 2**20}[unit]


def test_function_sizing_covers_the_benchmarked_peaks():
    """Memory at least twice the peak RSS the benchmarks measured; concurrency > 1 only with a whole vCPU."""
    peaks = {"predict": json.loads((REPO_ROOT / "bench" / "results" / "serving.json").read_text())["placeid"]["peak_rss_mib"],
             "ingest": json.loads((REPO_ROOT / "bench" / "results" / "ingest.json").read_text())["full_path"]["function_peak_rss_mib"]}
    variables = {name: body for block in parsed()["variables.tf"]["variable"] for name, body in block.items()}
    for name, peak in peaks.items():
        sizing = variables[name]["default"]
        assert _mib(sizing["memory"]) >= 2 * peak, f"{name}: {sizing['memory']} for a measured peak of {peak} MiB"
        assert sizing["concurrency"] == 1 or float(sizing["cpu"]) >= 1


@pytest.mark.slow  # runs the gcloud CLI
def test_cloudbuild_runs_the_gcloud_the_tests_parse_its_lines_with():
    """tests/test_gcloud_commands.py parses the build's gcloud lines with the CLI installed here: the build's
    images must carry that same release, or a flag it lacks would pass here and fail in the build."""
    gcloud = shutil.which("gcloud")
    assert gcloud, "the Google Cloud CLI is not installed"
    local = json.loads(subprocess.run([gcloud, "version", "--format=json"], capture_output=True, text=True,
                                      timeout=60).stdout)["Google Cloud SDK"]
    images = {step["name"] for step in cloudbuild()["steps"] if "google-cloud-cli" in step["name"]}
    assert images and all(f":{local}-" in image for image in images), \
        f"gcloud here is {local}; align cloudbuild.yaml's google-cloud-cli images: {sorted(images)}"
