"""Every argument and nested block in infra/*.tf and infra/*.tf.json exists in the pinned hashicorp/google (or,
for blocks with `provider = google-beta`, hashicorp/google-beta) provider's schema, offline: `terraform validate`
needs the provider binary, so the schema is extracted once from the provider's source
(infra/provider_schema/extract.py) and committed as infra/provider_schema/google-<version>.json and
google-beta-<version>.json.

Checked: (a) every google resource/data source type is in its provider's schema; (b) every argument and block
name exists at its nesting level (`dynamic "x"` counts as block x; lifecycle.ignore_changes paths too); (c) no
computed-only attribute is set; (d) required attributes and blocks are present (inside dynamic content too); block
counts stay within max_items; (e) infra/versions.tf pins exactly the versions the schemas were extracted from.
Blocks of other providers (hashicorp/time's time_sleep) are not checked."""

from __future__ import annotations

import difflib
import functools
import importlib.util
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import hcl2
import pytest
from hcl2.utils import SerializationOptions

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
SCHEMA_DIR = INFRA / "provider_schema"
GOOGLE = "google"
BETA = "google-beta"
PROVIDERS = (GOOGLE, BETA)  # the providers with an extracted schema, by their name in hashicorp/<name>
TYPES_FILES = {GOOGLE: SCHEMA_DIR / "types.txt", BETA: SCHEMA_DIR / "types-beta.txt"}
TYPES_FILE = TYPES_FILES[GOOGLE]
GOOGLE_SOURCE = f"hashicorp/{GOOGLE}"
BETA_SOURCE = f"hashicorp/{BETA}"
META_ARGUMENTS = {"count", "for_each", "depends_on", "lifecycle", "provider", "provisioner", "connection"}
KINDS = {"resource": "resources", "data": "data_sources"}


def regenerate_command(version: str, provider: str = GOOGLE) -> str:
    flag = "" if provider == GOOGLE else f" --provider {provider}"
    return (f"python infra/provider_schema/extract.py{flag} --git-dir PATH/TO/terraform-provider-{provider}.git "
            f"--ref v{version}  (a bare clone of https://github.com/hashicorp/terraform-provider-{provider}; no "
            "network needed after)")


# ------------------------------------------------------------------------------------------------ loading


@functools.cache
def load_schema(provider: str = GOOGLE) -> tuple[Path, dict]:
    """The committed schema document of hashicorp/<provider> (exactly one <provider>-<version>.json)."""
    files = sorted(p for p in SCHEMA_DIR.glob(f"{provider}-*.json")
                   if re.fullmatch(rf"{re.escape(provider)}-\d+\.\d+\.\d+\.json", p.name))
    assert len(files) == 1, (f"expected exactly one {provider}-<version>.json in {SCHEMA_DIR}, found {files}: run "
                             f"`{regenerate_command('X.Y.Z', provider)}`")
    return files[0], json.loads(files[0].read_text())


def load_schemas() -> dict[str, dict]:
    """Provider name (google, google-beta) -> its schema document."""
    return {provider: load_schema(provider)[1] for provider in PROVIDERS}


def parse_tf(text: str) -> dict:
    """HCL as python-hcl2 gives it, with `__is_block__` markers (blocks vs. object values) and no comments."""
    return hcl2.loads(text, serialization_options=SerializationOptions(with_comments=False, explicit_blocks=True))


def config_documents() -> dict[str, tuple[str, dict]]:
    """infra's configuration files: name -> (syntax "hcl" or "json", parsed document)."""
    docs: dict[str, tuple[str, dict]] = {}
    for path in sorted(INFRA.glob("*.tf")):
        docs[path.name] = ("hcl", parse_tf(path.read_text()))
    for path in sorted(INFRA.glob("*.tf.json")):
        docs[path.name] = ("json", json.loads(path.read_text()))
    return docs


def unquote(value: Any) -> Any:
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def _as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def _mappings(value: Any) -> Iterator[tuple[str, Any]]:
    """(key, value) pairs of a dict, or of a list of dicts (HCL's and Terraform JSON's repeated blocks)."""
    for item in _as_list(value):
        if isinstance(item, dict):
            for key, sub in item.items():
                if not str(key).startswith("__") and key != "//":
                    yield unquote(key), sub


@dataclass(frozen=True)
class ConfigBlock:
    file: str
    syntax: str  # "hcl" or "json"
    kind: str  # "resource" or "data"
    type: str
    name: str
    body: dict

    @property
    def where(self) -> str:
        return f"{self.file}: {'data.' if self.kind == 'data' else ''}{self.type}.{self.name}"


def config_blocks(documents: dict[str, tuple[str, dict]]) -> Iterator[ConfigBlock]:
    for file, (syntax, doc) in documents.items():
        for kind in KINDS:
            for type_name, by_name in _mappings(doc.get(kind, [])):
                for name, body in _mappings(by_name):
                    for item in _as_list(body):
                        yield ConfigBlock(file, syntax, kind, type_name, name, item)


def provider_local_name(block: ConfigBlock) -> str:
    """The provider a block belongs to: its `provider` meta-argument, else its type's prefix."""
    provider = block.body.get("provider")
    if isinstance(provider, str):
        return unquote(provider).strip("${}").split(".")[0]
    return block.type.split("_", 1)[0]


def _normal_source(source: Any) -> str:
    return str(unquote(source or "")).lower().removeprefix("registry.terraform.io/")


def required_providers(documents: dict[str, tuple[str, dict]]) -> Iterator[tuple[str, dict]]:
    """(local name, spec) of each required_providers entry."""
    for _, (_, doc) in documents.items():
        for terraform in _as_list(doc.get("terraform", [])):
            if not isinstance(terraform, dict):
                continue
            for local, spec in _mappings(terraform.get("required_providers", [])):
                yield local, spec if isinstance(spec, dict) else {}


def provider_sources(documents: dict[str, tuple[str, dict]]) -> dict[str, str]:
    """Local name -> source address, as required_providers declares them."""
    return {local: _normal_source(spec.get("source")) for local, spec in required_providers(documents)}


def schema_provider(block: ConfigBlock, sources: dict[str, str]) -> str | None:
    """google or google-beta: whose schema a block is checked against; None for other providers (time_sleep).

    A local name that required_providers does not declare means hashicorp/<local name>, as in Terraform."""
    local = provider_local_name(block)
    source = sources.get(local, f"hashicorp/{local}")
    for provider in PROVIDERS:
        if source == f"hashicorp/{provider}":
            return provider
    return None


# ------------------------------------------------------------------------------------------------ checker


@dataclass(frozen=True)
class Violation:
    category: str  # type, unknown, computed, required, syntax, count, ignore_changes
    message: str


def _is_hcl_block(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) and v.get("__is_block__")
                                                         for v in value)


def _suggest(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=2, cutoff=0.7)
    return f" (did you mean {' or '.join(close)}?)" if close else ""


def check_body(body: dict, schema: dict, where: str, syntax: str, top: bool = False) -> list[Violation]:
    """Violations of one block body against its schema ({"attributes": ..., "blocks": ...})."""
    found: list[Violation] = []
    attributes, blocks = schema["attributes"], schema["blocks"]
    present: set[str] = set()
    block_counts: dict[str, int] = {}
    dynamic_names: set[str] = set()
    for key, value in body.items():
        key = unquote(key)
        if key.startswith("__") or key == "//" or (top and key in META_ARGUMENTS):
            continue
        path = f"{where}.{key}"
        if key == "dynamic":
            for label, spec in _mappings(value):
                dpath = f"{where}.dynamic \"{label}\""
                if label not in blocks:
                    kind = "an attribute, not a block" if label in attributes else "not an argument or block here"
                    found.append(Violation("unknown", f"{dpath}: {label} is {kind}{_suggest(label, list(blocks))}"))
                    continue
                present.add(label)
                dynamic_names.add(label)
                for spec_body in _as_list(spec):
                    contents = spec_body.get("content", []) if isinstance(spec_body, dict) else []
                    for content in _as_list(contents):
                        if isinstance(content, dict):
                            found += check_body(content, blocks[label]["schema"], f"{dpath}.content", syntax)
            continue
        if key in attributes:
            present.add(key)
            attr = attributes[key]
            if syntax == "hcl" and _is_hcl_block(value):
                found.append(Violation("syntax", f"{path}: is an attribute; write `{key} = ...`, not a block"))
            if attr["computed"] and not attr["optional"] and not attr["required"]:
                found.append(Violation("computed", f"{path}: is computed-only (set by the provider), it cannot be set"))
            continue
        if key in blocks:
            present.add(key)
            spec = blocks[key]
            if syntax == "hcl" and not _is_hcl_block(value):
                found.append(Violation("syntax", f"{path}: is a block; write `{key} {{ ... }}`, not `{key} = ...`"))
                continue
            items = [v for v in _as_list(value) if isinstance(v, dict)]
            block_counts[key] = len(items)
            for index, item in enumerate(items):
                found += check_body(item, spec["schema"], f"{path}[{index}]", syntax)
            continue
        found.append(Violation("unknown", f"{path}: no such argument or block{_suggest(key, [*attributes, *blocks])}"))
    for name, attr in attributes.items():
        if attr["required"] and name not in present:
            found.append(Violation("required", f"{where}: missing required argument {name}"))
    for name, spec in blocks.items():
        if spec["min_items"] >= 1 and name not in present:
            found.append(Violation("required", f"{where}: missing required block {name}"))
        count = block_counts.get(name, 0)
        if name not in dynamic_names and spec["max_items"] and count > spec["max_items"]:
            found.append(Violation("count", f"{where}.{name}: {count} blocks, at most {spec['max_items']} allowed"))
    return found


def check_ignore_changes(block: ConfigBlock, schema: dict) -> list[Violation]:
    """lifecycle.ignore_changes paths name attributes/blocks that exist."""
    found = []
    for lifecycle in _as_list(block.body.get("lifecycle", [])):
        if not isinstance(lifecycle, dict):
            continue
        for entry in _as_list(lifecycle.get("ignore_changes", [])):
            text = str(unquote(entry)).removeprefix("${").removesuffix("}")
            if text == "all":
                continue
            level: dict | None = schema
            for step in re.findall(r"[A-Za-z_][\w-]*|\[[^\]]*\]", text):
                if step.startswith("[") or level is None:
                    continue
                if step in level["blocks"]:
                    level = level["blocks"][step]["schema"]
                elif step in level["attributes"]:
                    level = None  # map keys or list elements may follow
                else:
                    found.append(Violation("ignore_changes", f"{block.where}.lifecycle.ignore_changes: {text}: no "
                                                             f"{step} at that level"))
                    break
    return found


def violations(documents: dict[str, tuple[str, dict]], schemas: dict[str, dict] | None = None) -> list[Violation]:
    """Everything in the documents' google and google-beta resource/data blocks that the provider schemas (provider
    name -> schema document; default: the committed ones) do not allow."""
    schemas = load_schemas() if schemas is None else schemas
    found: list[Violation] = []
    sources = provider_sources(documents)
    for block in config_blocks(documents):
        provider = schema_provider(block, sources)
        if provider is None:
            continue  # another provider (time_sleep): not these schemas' business
        schema = schemas[provider]
        version = schema.get("version", "?")
        table = schema[KINDS[block.kind]]
        if block.type not in table:
            hint = ("a google-beta-only type needs provider = google-beta" if provider == GOOGLE
                    else "use the GA provider (no provider = google-beta) for a GA type")
            found.append(Violation("type", (
                f"{block.where}: {block.kind} type {block.type} is not in {provider}-{version}.json: add `{block.kind} {block.type}` to "
                f"{TYPES_FILES[provider].relative_to(REPO)} and run `{regenerate_command(version, provider)}`; if "
                f"extract.py says it is not in the provider's maps, hashicorp/{provider} {version} has no such type "
                f"({hint})")))
            continue
        found += check_body(block.body, table[block.type], block.where, block.syntax, top=True)
        found += check_ignore_changes(block, table[block.type])
    return found


def pinned_version(documents: dict[str, tuple[str, dict]], provider: str = GOOGLE) -> str | None:
    """The hashicorp/<provider> version constraint in required_providers, as written."""
    for _, spec in required_providers(documents):
        if _normal_source(spec.get("source")) == f"hashicorp/{provider}":
            return unquote(spec.get("version"))
    return None


def pinned_google_version(documents: dict[str, tuple[str, dict]]) -> str | None:
    """The hashicorp/google version constraint in required_providers, as written."""
    return pinned_version(documents, GOOGLE)


def providers_used(documents: dict[str, tuple[str, dict]]) -> set[str]:
    """Which of google and google-beta the documents' resource/data blocks use."""
    sources = provider_sources(documents)
    return {p for block in config_blocks(documents) if (p := schema_provider(block, sources)) is not None}


def read_types_file(path: Path) -> set[tuple[str, str]]:
    listed = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            kind, name = line.split()
            listed.add((kind, name))
    return listed


# ------------------------------------------------------------------------------------------------ tests


def _report(found: list[Violation]) -> str:
    return f"{len(found)} violation(s):\n" + "\n".join(f"  {v.message}" for v in found)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_schema_json_has_exactly_the_types_in_types_txt(provider: str):
    path, schema = load_schema(provider)
    listed = read_types_file(TYPES_FILES[provider])
    extracted = {(kind, name) for kind, key in KINDS.items() for name in schema[key]}
    assert listed == extracted, (f"{path.name} is stale: run `{regenerate_command(schema['version'], provider)}` "
                                 f"(missing: {sorted(listed - extracted)}, extra: {sorted(extracted - listed)})")
    assert schema["provider"] == f"hashicorp/{provider}" and schema["ref"] == f"v{schema['version']}"
    assert path.name == f"{provider}-{schema['version']}.json"


def test_every_google_type_used_is_in_the_schema():
    found = [v for v in violations(config_documents()) if v.category == "type"]
    assert not found, _report(found)


def test_every_argument_and_block_exists_and_required_ones_are_set():
    found = [v for v in violations(config_documents()) if v.category != "type"]
    assert not found, _report(found)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_pinned_provider_version_is_the_schema_version(provider: str):
    path, schema = load_schema(provider)
    documents = config_documents()
    constraint = pinned_version(documents, provider)
    if constraint is None and provider != GOOGLE and provider not in providers_used(documents):
        return  # google-beta neither used nor declared: nothing to pin
    assert constraint is not None, (f"infra/versions.tf: no required_providers entry with source hashicorp/{provider}"
                                    f" (add {provider} = {{ source = \"hashicorp/{provider}\", version = "
                                    f"\"= {schema['version']}\" }})")
    match = re.fullmatch(r"\s*=?\s*(\d+\.\d+\.\d+)\s*", constraint)
    assert match, (f"infra/versions.tf: pin hashicorp/{provider} exactly (version = \"= {schema['version']}\"), "
                   f"not {constraint!r}: {path.name} is the schema the arguments are checked against")
    assert match.group(1) == schema["version"], (
        f"infra/versions.tf pins hashicorp/{provider} {match.group(1)} but {path.name} is for {schema['version']}: "
        f"pin \"= {schema['version']}\" or regenerate with `{regenerate_command(match.group(1), provider)}`")


def test_schema_has_what_infra_relies_on():
    """Guards the extraction itself: known nested arguments are there, and a made-up one is not."""
    resources = load_schema()[1]["resources"]
    job = resources["google_cloud_run_v2_job"]["blocks"]["template"]["schema"]["blocks"]["template"]["schema"]
    gcs = job["blocks"]["volumes"]["schema"]["blocks"]["gcs"]["schema"]
    assert gcs["attributes"]["bucket"]["required"] and "read_only" in gcs["attributes"]
    build = resources["google_cloudfunctions2_function"]["blocks"]["build_config"]["schema"]
    assert build["attributes"]["service_account"]["optional"]
    policies = resources["google_artifact_registry_repository"]["blocks"]["cleanup_policies"]["schema"]
    assert {"id", "action"} <= set(policies["attributes"]) and {"condition", "most_recent_versions"} <= set(
        policies["blocks"])
    bucket = resources["google_storage_bucket"]
    assert "storage_class_default" not in bucket["attributes"] | bucket["blocks"]
    assert bucket["attributes"]["self_link"] == {"type": "string", "required": False, "optional": False,
                                                 "computed": True}


def test_beta_schema_has_what_infra_relies_on():
    """iam.tf reads google_project_service_identity.eventarc.member, which only hashicorp/google-beta has."""
    identity = load_schema(BETA)[1]["resources"]["google_project_service_identity"]["attributes"]
    computed = {"type": "string", "required": False, "optional": False, "computed": True}
    assert identity["member"] == computed and identity["email"] == computed
    assert identity["service"]["required"] and identity["project"]["optional"]
    assert "google_project_service_identity" not in load_schema(GOOGLE)[1]["resources"]


SYNTHETIC = """
resource "google_storage_bucket" "typo" {
  name                       = "b"
  locaton                    = "EU"
  uniform_bucket_level_acess = true
  self_link                  = "x"
  versioning = { enabled = true }
  lifecycle_rule {
    condition { age = 1 }
    action { tpe = "Delete" }
  }
  lifecycle {
    ignore_changes = [lifecycle_rule[0].acton, labels]
  }
}

resource "google_cloud_run_v2_job" "dyn" {
  name     = "j"
  location = "europe-west1"
  template {
    template {
      containers {
        image = "x"
        dynamic "env" {
          for_each = {}
          content {
            value = env.value
          }
        }
        dynamic "volume_mount" {
          for_each = []
          content {}
        }
      }
      dynamic "volumes" {
        for_each = [1]
        content {
          name = "data"
          gcs {
            bucket   = "b"
            readonly = true
          }
        }
      }
    }
  }
}

resource "google_service_account" "two_timeouts" {
  account_id = "a"
  timeouts {
    create = "1m"
  }
  timeouts {
    create = "2m"
  }
}

resource "google_made_up_thing" "x" {}

resource "time_sleep" "other_provider" {
  create_duration = "1s"
}
"""


def _synthetic(text: str = SYNTHETIC) -> list[str]:
    return [v.message for v in violations({"synthetic.tf": ("hcl", parse_tf(text))})]


def test_checker_reports_a_misspelled_argument_and_a_missing_required_one():
    found = _synthetic()
    expected = [
        "synthetic.tf: google_storage_bucket.typo.locaton: no such argument or block (did you mean location?)",
        "synthetic.tf: google_storage_bucket.typo: missing required argument location",
    ]
    for message in expected:
        assert message in found, "\n".join(found)


def test_checker_reports_every_kind_of_violation():
    found = "\n".join(_synthetic())
    for fragment in [
        "typo.uniform_bucket_level_acess: no such argument or block (did you mean uniform_bucket_level_access?)",
        "typo.self_link: is computed-only",
        "typo.versioning: is a block; write `versioning { ... }`",
        "typo.lifecycle_rule[0].action[0].tpe: no such argument or block",
        "typo.lifecycle_rule[0].action[0]: missing required argument type",
        "typo.lifecycle.ignore_changes: lifecycle_rule[0].acton: no acton at that level",
        # inside dynamic content: unknown names and missing required arguments are still found
        'containers[0].dynamic "env".content: missing required argument name',
        'containers[0].dynamic "volume_mount": volume_mount is not an argument or block here (did you mean '
        'volume_mounts?)',
        'template[0].dynamic "volumes".content.gcs[0].readonly: no such argument or block (did you mean read_only?)',
        "two_timeouts.timeouts: 2 blocks, at most 1 allowed",
        "google_made_up_thing.x: resource type google_made_up_thing is not in",
    ]:
        assert fragment in found, f"{fragment!r} not reported in:\n{found}"
    assert "time_sleep" not in found and "labels" not in found
    assert "dynamic \"volumes\".content: missing required" not in found  # name is set there


def test_checker_reads_terraform_json_syntax():
    document = {"resource": {"google_firestore_field": {"f": {
        "project": "p", "database": "(default)", "collection": "c", "field": "members",
        "index_config": {}, "ttl_config": {"stat": "x"}, "colection_group": "y", "//": "comment"}}}}
    found = [v.message for v in violations({"x.tf.json": ("json", document)})]
    assert any("f.ttl_config[0].stat: no such argument or block" in m for m in found), found
    assert any("f.colection_group: no such argument or block" in m for m in found), found
    assert len(found) == 2, found


def test_clean_synthetic_config_has_no_violations():
    text = """
resource "google_storage_bucket" "ok" {
  name     = "b"
  location = "EU"
  count    = 1
  lifecycle_rule {
    condition {
      age = 1
    }
    action {
      type = "Delete"
    }
  }
  lifecycle {
    ignore_changes = [labels, lifecycle_rule[0].condition]
  }
  depends_on = []
}

data "google_storage_project_service_account" "gcs" {}
"""
    assert _synthetic(text) == []


@pytest.mark.parametrize("constraint,ok", [("= 6.50.0", True), ("6.50.0", True), ("~> 6.0", False),
                                           (">= 6.50.0", False)])
def test_version_pin_must_be_exact(constraint: str, ok: bool):
    text = f'terraform {{\n  required_providers {{\n    google = {{\n      source  = "hashicorp/google"\n' \
           f'      version = "{constraint}"\n    }}\n  }}\n}}\n'
    found = pinned_google_version({"versions.tf": ("hcl", parse_tf(text))})
    assert found == constraint
    assert bool(re.fullmatch(r"\s*=?\s*(\d+\.\d+\.\d+)\s*", found)) is ok


BETA_SYNTHETIC = """
resource "google_project_service_identity" "beta_typo" {
  provider = google-beta
  project  = "p"
  servise  = "eventarc.googleapis.com"
  member   = "serviceAccount:x@example.com"
}

resource "google_project_service_identity" "ok" {
  provider = google-beta
  service  = "eventarc.googleapis.com"
  timeouts {
    create = "5m"
  }
}

resource "google_project_service_identity" "without_beta" {
  service = "eventarc.googleapis.com"
}

resource "google_storage_bucket" "beta_bucket" {
  provider = google-beta
  name     = "b"
  location = "EU"
}
"""


def test_checker_checks_google_beta_blocks_against_the_beta_schema():
    found = "\n".join(_synthetic(BETA_SYNTHETIC))
    for fragment in [
        "beta_typo.servise: no such argument or block (did you mean service?)",
        "beta_typo: missing required argument service",
        "beta_typo.member: is computed-only",
        # a GA block of a beta-only type: not in the GA schema, and the message says to use google-beta
        f"without_beta: resource type google_project_service_identity is not in google-{load_schema()[1]['version']}.json",
        "a google-beta-only type needs provider = google-beta",
        # a google-beta block of a type types-beta.txt does not list: fails with the beta regenerate command
        "beta_bucket: resource type google_storage_bucket is not in google-beta-",
        "add `resource google_storage_bucket` to infra/provider_schema/types-beta.txt and run "
        "`python infra/provider_schema/extract.py --provider google-beta --git-dir "
        "PATH/TO/terraform-provider-google-beta.git --ref v",
    ]:
        assert fragment in found, f"{fragment!r} not reported in:\n{found}"
    assert "google_project_service_identity.ok" not in found


def test_checker_follows_required_providers_local_names():
    text = """
terraform {
  required_providers {
    beta = {
      source  = "hashicorp/google-beta"
      version = "= 6.50.0"
    }
  }
}

resource "google_project_service_identity" "aliased" {
  provider = beta
  service  = "eventarc.googleapis.com"
  bogus    = 1
}
"""
    documents = {"x.tf": ("hcl", parse_tf(text))}
    assert [v.message for v in violations(documents)] == [
        "x.tf: google_project_service_identity.aliased.bogus: no such argument or block"]
    assert pinned_version(documents, BETA) == "= 6.50.0" and pinned_version(documents, GOOGLE) is None
    assert providers_used(documents) == {BETA}


def test_extractor_stale_cleanup_keeps_the_other_providers_files():
    spec = importlib.util.spec_from_file_location("provider_schema_extract", SCHEMA_DIR / "extract.py")
    assert spec and spec.loader
    extract = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = extract  # dataclasses look their module up there
    try:
        spec.loader.exec_module(extract)
    finally:
        del sys.modules[spec.name]
    google, beta = extract.PROVIDERS[GOOGLE], extract.PROVIDERS[BETA]
    assert google.owns(Path("google-6.0.0.json")) and not google.owns(Path("google-beta-6.0.0.json"))
    assert beta.owns(Path("google-beta-6.0.0.json")) and not beta.owns(Path("google-6.0.0.json"))
    assert google.types_file == TYPES_FILES[GOOGLE] and beta.types_file == TYPES_FILES[BETA]
    assert (google.output_name("6.50.0"), beta.output_name("6.50.0")) == ("google-6.50.0.json",
                                                                          "google-beta-6.50.0.json")
