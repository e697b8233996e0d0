"""The fast tier (`make test-fast`) selects no test that starts the emulators or trains a model, nor one that runs
gcloud, terraform, checkov, the emulated trainer image or Chromium: checked on the suite's real collection, made in
a fresh process with the Makefile's own `-m` expression."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from placeid.config import REPO_ROOT
from tests.conftest import SLOW_FIXTURES, slow_fixtures

#: The fixtures that start the emulators (settings, db, bucket, catalog, ... use them) or train a model.
EMULATOR_AND_MODEL_FIXTURES = {"emulators", "small_bundle"}
#: Fixtures of the test modules that run slow subprocesses: every test using one must be marked slow by hand.
SLOW_SUBPROCESS_FIXTURES = {
    ("tests.test_gcloud_commands", "gcloud_outcomes"),  # the gcloud CLI, once per command line
    ("tests.test_trainer_image", "image"),  # the trainer image emulated: a venv, pip, training
    ("tests.test_cloudbuild_steps", "ran_steps"),  # a fresh venv and the build steps
    ("tests.conftest", "browser"),  # headless Chromium
}
#: Tests that run such a subprocess themselves.
SLOW_SUBPROCESS_TESTS = {
    "tests/test_infra.py::test_terraform_fmt",
    "tests/test_infra.py::test_checkov_passes_with_reasons_for_every_skip",
    "tests/test_infra.py::test_cloudbuild_runs_the_gcloud_the_tests_parse_its_lines_with",
}

#: Collects the suite in this process with the given arguments and writes, for every test, whether it was
#: selected, its markers and its fixtures (with the module that defines each) as JSON to argv[1].
PROBE = r"""
import json, sys
import pytest

class Probe:
    def __init__(self):
        self.selected, self.deselected = [], []

    def pytest_deselected(self, items):
        self.deselected += items

    def pytest_collection_finish(self, session):
        self.selected = list(session.items)

def describe(item, selected):
    defs = item._fixtureinfo.name2fixturedefs
    return {"nodeid": item.nodeid, "selected": selected, "markers": sorted({m.name for m in item.iter_markers()}),
            "fixtures": sorted(item.fixturenames),
            "defined_in": {name: defs[name][-1].func.__module__ for name in item.fixturenames if defs.get(name)}}

probe = Probe()
code = pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", *sys.argv[2:]], plugins=[probe])
items = [describe(i, True) for i in probe.selected] + [describe(i, False) for i in probe.deselected]
with open(sys.argv[1], "w") as out:
    json.dump({"code": int(code), "items": items}, out)
"""


def fast_tier_expression() -> str:
    """The `-m` expression `make test-fast` passes to pytest."""
    recipe = re.search(r"^test-fast:.*\n\t(.+)$", (REPO_ROOT / "Makefile").read_text(), re.MULTILINE)
    assert recipe, "no test-fast target in the Makefile"
    expression = re.search(r"""-m\s+(["'])(.+?)\1""", recipe.group(1))
    assert expression, f"test-fast runs no `-m` selection: {recipe.group(1)}"
    return expression.group(2)


@pytest.fixture(scope="module")
def collected(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("collection") / "items.json"
    done = subprocess.run([sys.executable, "-c", PROBE, str(out), "-m", fast_tier_expression()], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and out.is_file(), done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["code"] == 0, done.stdout[-3000:]
    return result["items"]


def test_the_fast_tier_is_not_slow():
    assert fast_tier_expression() == "not slow"


def test_no_emulator_or_model_user_is_in_the_fast_tier(collected):
    assert SLOW_FIXTURES.keys() >= EMULATOR_AND_MODEL_FIXTURES
    users = [item for item in collected if set(item["fixtures"]) & EMULATOR_AND_MODEL_FIXTURES]
    assert users, "no test uses the emulators or the trained model: the collection probe is broken"
    assert all("slow" in item["markers"] for item in users), [i["nodeid"] for i in users if "slow" not in i["markers"]]
    assert not [item["nodeid"] for item in users if item["selected"]]
    # Fixtures reach them through others: a test asking only for `db` or `catalog` is one of them.
    assert {"tests/test_catalog.py", "tests/test_ingest_function.py", "tests/test_edge.py"} <= {
        item["nodeid"].split("::")[0] for item in users if set(item["fixtures"]) & {"db", "catalog", "small_bundle"}}


def test_no_slow_subprocess_is_in_the_fast_tier(collected):
    def runs_one(item: dict) -> bool:
        uses = {(module, name) for name, module in item["defined_in"].items()}
        return bool(uses & SLOW_SUBPROCESS_FIXTURES) or item["nodeid"].split("[")[0] in SLOW_SUBPROCESS_TESTS

    slow = [item for item in collected if runs_one(item)]
    assert {item["nodeid"].split("::")[0] for item in slow} == {
        "tests/test_gcloud_commands.py", "tests/test_trainer_image.py", "tests/test_cloudbuild_steps.py",
        "tests/test_predict_http.py", "tests/test_vetting.py", "tests/test_infra.py", "tests/test_offline_page.py"}
    assert not [item["nodeid"] for item in slow if item["selected"] or "slow" not in item["markers"]]


def test_the_fast_tier_is_what_is_not_marked_slow(collected):
    selected = {item["nodeid"] for item in collected if item["selected"]}
    assert selected == {item["nodeid"] for item in collected if "slow" not in item["markers"]}
    assert len(selected) >= 50 and len(collected) - len(selected) >= 50, (len(selected), len(collected))
    # Unit tests of every kind stay in it, this file included.
    for module in ("test_hashing", "test_layers", "test_infra_schema", "test_memory_budget", "test_fast_tier"):
        assert any(nodeid.startswith(f"tests/{module}.py::") for nodeid in selected), module


def test_classification_follows_the_fixture_closure(request):
    """slow_fixtures() reads the closure pytest resolved: this test uses none; a stand-in item with `db` (whose
    closure pytest would extend to settings and emulators) is slow through `emulators`."""
    assert slow_fixtures(request.node) == []
    assert "slow" not in {mark.name for mark in request.node.iter_markers()}

    class Item:
        fixturenames = ["db", "settings", "emulators", "stack_settings", "data_dir", "small_bundle"]

    assert slow_fixtures(Item()) == ["emulators", "small_bundle"]
