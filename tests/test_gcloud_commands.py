"""Every gcloud command line the project gives to machines or people is parsed by the real gcloud CLI, offline.

Sources, read at collection time (they change):
- cloudbuild.yaml: steps run by gcloud (``entrypoint: gcloud``, or the ``cloud-builders/gcloud`` image) and the
  ``gcloud`` commands inside ``bash -c`` / ``script`` shell text, after Cloud Build's substitutions (the file's
  ``substitutions:``, resolved among themselves with ``dynamicSubstitutions``, plus the built-ins in
  CLOUD_BUILD_BUILTINS; any other one fails its case); and the commands shown in the file's ``#`` comments;
- fenced shell blocks (```bash, ```sh, ```shell, ```console or untyped) of every Markdown file of the repository.

Shell text is cut into simple commands (``&&``, ``||``, ``;``, ``|``, ``(``/``)``, ``if``/``then``/``else``/``fi``,
...); commands inside ``$(...)`` are taken too. Dummy values: each ``$(...)`` becomes SUBSTITUTED_OUTPUT; a shell
variable ``$VAR``/``${VAR}`` becomes its ``${VAR:-default}`` if given, else us-central1 (names with REGION or
LOCATION), ``dummy`` (names with PROJECT) or ``dummy-var``; a hyphenated CAPS placeholder (MY-PROJECT,
MY-DATA-BUCKET) is lower-cased. Redirections (``> file``) are dropped.

Each command runs in the repository root with a fresh CLOUDSDK_CONFIG (empty but for a "not on GCE" cache),
project ``dummy``, no credentials, stdin /dev/null, prompts off, no browser and the GCE metadata check off: without
these gcloud looks up metadata.google.internal (and on a Google Cloud machine, Cloud Build included, would use
real credentials). No command then touches the network. Accepted outcomes: exit 0, or exit 1 saying that no
account is active (or, for ``auth login``, after printing the sign-in link), i.e. gcloud parsed and validated
everything and then needed credentials. A usage error (exit 2: unknown command group or command, unrecognized
flag, bad flag value, missing argument) fails, and so does any other error (e.g. "You must specify a region", an
unreadable or invalid --config file) and a timeout.
"""

from __future__ import annotations

import itertools
import functools
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
CLOUDBUILD = REPO_ROOT / "cloudbuild.yaml"
GCLOUD = shutil.which("gcloud")
TIMEOUT_S = 60
DUMMY_PROJECT = "dummy"
SUBSTITUTED_OUTPUT = "dummy-output"
CLOUD_BUILD_BUILTINS = {
    "PROJECT_ID": DUMMY_PROJECT,
    "PROJECT_NUMBER": "123456789012",
    "BUILD_ID": "0f1e2d3c-4b5a-4978-8796-a5b4c3d2e1f0",
    "LOCATION": "us-central1",
    "SHORT_SHA": "abc1234",
    "COMMIT_SHA": "abc1234",
}
GCLOUD_ENV = {
    "CLOUDSDK_CORE_PROJECT": DUMMY_PROJECT,
    "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
    "CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK": "1",
    "CLOUDSDK_CORE_CHECK_GCE_METADATA": "false",  # no metadata-server lookup, never the machine's credentials
    "CLOUDSDK_CORE_DISABLE_USAGE_REPORTING": "true",
    "CLOUDSDK_METRICS_ENVIRONMENT": "placeid-tests",  # else metrics code probes for GCE too
    "CLOUDSDK_CORE_DISABLE_COLOR": "true",
    "CLOUDSDK_CORE_DISABLE_FILE_LOGGING": "true",
    "TERM": "dumb",
    "BROWSER": "www-browser",  # a name gcloud never launches: `auth login` only prints its link
}
DROPPED_ENV = ("CLOUDSDK_", "GOOGLE_", "GCE_", "BOTO_", "DISPLAY", "WAYLAND_DISPLAY", "MIR_SOCKET")
SELF_TEST_VALID = ("gcloud", "run", "jobs", "execute", "placeid-train", "--region=us-central1", "--wait")
SELF_TEST_USAGE_ERRORS = {  # the word gcloud must complain about: its command line
    "--no-such-flag": (*SELF_TEST_VALID, "--no-such-flag"),
    "jobz": ("gcloud", "run", "jobz", "execute", "placeid-train", "--region=us-central1"),
}

SHELL_LANGUAGES = {"", "bash", "sh", "shell", "zsh", "console", "shell-session"}
FENCE = re.compile(r"^\s*(`{3,}|~{3,})\s*([\w+-]*)")
SKIPPED_DIRS = {"dist", "build", "node_modules", "shared", "runs"}
SHELL_KEYWORDS = {"if", "then", "else", "elif", "fi", "do", "done", "while", "until", "!", "{", "}"}
ASSIGNMENT = re.compile(r"^[A-Za-z_]\w*=")
SHELL_VARIABLE = re.compile(r"\$\{(\w+)([^}]*)\}|\$([A-Za-z_]\w*)")
CLOUD_BUILD_SUBSTITUTION = re.compile(r"\$\$|\$\{(\w+)\}|\$(\w+)")
CAPS_PLACEHOLDER = re.compile(r"\b[A-Z][A-Z0-9]*(?:-[A-Z0-9]+)+\b")
USAGE_ERROR = re.compile(r"unrecognized arguments|Invalid choice|Command name argument expected"
                         r"|\(gcloud[\w.-]*\) argument |^Usage: gcloud ", re.M)
NEEDS_CREDENTIALS = re.compile(r"You do not currently have an active account selected"
                               r"|select an already authenticated account"
                               r"|Go to the following link in your browser")  # auth login, reading a code


@dataclass(frozen=True)
class Command:
    """One gcloud command line found in a source (or why it could not be made one)."""

    source: str  # "infra/README.md:32", "cloudbuild.yaml#deploy-ingest"
    argv: tuple[str, ...] = ()
    problem: str = ""

    @property
    def file(self) -> str:
        return re.split(r"[:#]", self.source)[0]

    @property
    def id(self) -> str:
        head = " ".join(itertools.takewhile(lambda word: not word.startswith("-"), self.argv[:5])) or "(unparsed)"
        return f"{self.source} {head if len(head) <= 60 else head[:57] + '...'}"


@dataclass(frozen=True)
class Outcome:
    """What gcloud did: its exit status (None: killed after TIMEOUT_S) and its stderr."""

    returncode: int | None
    stderr: str


Outcomes = dict[tuple[str, ...], Outcome]  # by command line


# ---------------------------------------------------------------------------------------------- shell text


def _closing_paren(text: str, start: int) -> int:
    """Index of the ``)`` that closes the ``$(`` whose body starts at ``start`` (quotes respected)."""
    depth, quote = 1, ""
    for i in range(start, len(text)):
        char = text[i]
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "()":
            depth += 1 if char == "(" else -1
            if depth == 0:
                return i
    raise ValueError("unclosed $(")


def _command_substitutions(text: str) -> tuple[str, list[str]]:
    """``text`` with each outermost ``$(...)`` (not in single quotes) replaced by SUBSTITUTED_OUTPUT, and the
    bodies of those substitutions."""
    out: list[str] = []
    bodies: list[str] = []
    i, quote = 0, ""
    while i < len(text):
        char = text[i]
        if char == "$" and text.startswith("$(", i) and quote != "'":
            end = _closing_paren(text, i + 2)
            bodies.append(text[i + 2:end])
            out.append(SUBSTITUTED_OUTPUT)
            i = end + 1
            continue
        if char in "'\"" and quote in ("", char):
            quote = "" if quote else char
        out.append(char)
        i += 1
    return "".join(out), bodies


def _shell_value(match: re.Match[str]) -> str:
    """A plausible value for the shell variable of ``match`` (SHELL_VARIABLE)."""
    name = match.group(1) or match.group(3)
    rest = match.group(2) or ""
    if rest.startswith((":-", "-")):
        return rest.split("-", 1)[1]
    if "REGION" in name.upper() or "LOCATION" in name.upper():
        return "us-central1"
    if "PROJECT" in name.upper():
        return DUMMY_PROJECT
    return "dummy-" + name.lower().replace("_", "-")


def _dummy_word(word: str) -> str:
    word = SHELL_VARIABLE.sub(_shell_value, word)
    return CAPS_PLACEHOLDER.sub(lambda m: m.group(0).lower(), word)


def _simple_commands(words: list[str]) -> Iterator[list[str]]:
    """The simple commands of a token list: split at control operators, without leading keywords and
    assignments, without redirections."""
    command: list[str] = []
    tokens = iter(words)
    for token in tokens:
        if token and set(token) <= set("();|&<>"):  # an operator (shlex keeps quoted words, so this is one)
            if set(token) & set("<>"):
                next(tokens, None)  # the redirection's target
                if command and command[-1].isdigit():
                    command.pop()  # 2>/dev/null
                continue
            yield command
            command = []
        elif not command and (token in SHELL_KEYWORDS or ASSIGNMENT.match(token)):
            continue
        else:
            command.append(token)
    yield command


def gcloud_argvs(text: str) -> list[tuple[str, ...]]:
    """Every ``gcloud ...`` command in a piece of shell text, with dummy values (see the module docstring).
    Raises ValueError on shell text that cannot be split (unbalanced quotes or ``$(``)."""
    text, bodies = _command_substitutions(text)
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    found = [tuple(_dummy_word(w) for w in command)
             for command in _simple_commands(list(lexer)) if command and command[0] == "gcloud"]
    for body in bodies:
        found += gcloud_argvs(body)
    return found


def logical_lines(numbered: Iterable[tuple[int, str]]) -> Iterator[tuple[int, str]]:
    """Join backslash continuations; skip blank and comment lines; numbers are those of the first line."""
    start, parts = 0, []
    for number, line in numbered:
        if not parts:
            start = number
        if line.rstrip().endswith("\\"):
            parts.append(line.rstrip()[:-1])
            continue
        joined = " ".join(parts + [line]).strip()
        parts = []
        if joined and not joined.startswith("#"):
            yield start, joined
    if parts:
        yield start, " ".join(parts).strip()


def shell_commands(source: str, text: str) -> list[Command]:
    """The gcloud commands of one piece of shell text, or one Command saying why it could not be split (text
    without the word gcloud, e.g. a file tree in an untyped block, is not split at all)."""
    if not re.search(r"\bgcloud\b", text):
        return []
    try:
        return [Command(source, argv) for argv in gcloud_argvs(text)]
    except ValueError as error:
        return [Command(source, problem=f"{source}: cannot split {text!r} as shell: {error}")]


# ------------------------------------------------------------------------------------------------ sources


def markdown_files() -> list[Path]:
    return sorted(path for path in REPO_ROOT.rglob("*.md")
                  if not any(part.startswith(".") or part in SKIPPED_DIRS
                             for part in path.relative_to(REPO_ROOT).parts[:-1]))


def fenced_shell_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) of each line inside a fenced shell code block; console prompts removed."""
    fence = ""
    keep = False
    for number, line in enumerate(text.splitlines(), 1):
        if not fence:
            match = FENCE.match(line)
            if match:
                fence, keep = match.group(1), match.group(2).lower() in SHELL_LANGUAGES
        elif line.strip().startswith(fence) and not line.strip().strip(fence[0]):
            fence = ""
        elif keep:
            yield number, re.sub(r"^\s*\$ ", "", line)


def markdown_commands(path: Path) -> list[Command]:
    name = path.relative_to(REPO_ROOT).as_posix()
    lines = logical_lines(fenced_shell_lines(path.read_text()))
    return [command for number, line in lines for command in shell_commands(f"{name}:{number}", line)]


def cloud_build_substitute(value: Any, lookup: Callable[[str], str]) -> str:
    """``value`` as Cloud Build runs it: ``$$`` -> ``$``, ``${NAME}``/``$NAME`` -> lookup(NAME) (KeyError: unknown)."""
    return CLOUD_BUILD_SUBSTITUTION.sub(lambda m: "$" if m.group(0) == "$$" else lookup(m.group(1) or m.group(2)),
                                        str(value))


def cloud_build_substitutions(config: dict[str, Any]) -> dict[str, str]:
    """The built-ins and the file's substitutions; with options.dynamicSubstitutions (always on in triggers) a
    value may name others, resolved here (KeyError: an unknown or circular name)."""
    values = {**CLOUD_BUILD_BUILTINS, **{k: str(v) for k, v in (config.get("substitutions") or {}).items()}}
    if not (config.get("options") or {}).get("dynamicSubstitutions"):
        return values

    def resolve(name: str, seen: frozenset[str]) -> str:
        if name in seen or name not in values:
            raise KeyError(name)
        return cloud_build_substitute(values[name], lambda inner: resolve(inner, seen | {name}))

    return {name: resolve(name, frozenset()) for name in values}


def _unknown_substitution(source: str, error: KeyError, known: Iterable[str]) -> Command:
    return Command(source, problem=(
        f"{source}: unknown (or circular) substitution ${{{error.args[0]}}}: Cloud Build fails on it (or this test "
        f"does not know it: add it to CLOUD_BUILD_BUILTINS). Known: {', '.join(sorted(known))}"))


def _step_commands(source: str, step: dict[str, Any], values: dict[str, str]) -> list[Command]:
    entrypoint = step.get("entrypoint") or ""
    image = str(step.get("name", "")).split(":")[0]
    args = [str(arg) for arg in step.get("args", [])]
    runs_gcloud = entrypoint == "gcloud" or (not entrypoint and image.endswith("/gcloud"))
    shell_flag = next((i for i, arg in enumerate(args) if re.fullmatch(r"-\w*c\w*", arg)), None)
    script = step.get("script") or ""
    if entrypoint in ("bash", "sh") and shell_flag is not None and shell_flag + 1 < len(args):
        script = args[shell_flag + 1]
    if not runs_gcloud and "gcloud" not in script:
        return []
    try:
        if runs_gcloud:
            return [Command(source, ("gcloud", *(cloud_build_substitute(arg, values.__getitem__) for arg in args)))]
        return shell_commands(source, cloud_build_substitute(script, values.__getitem__))
    except KeyError as error:
        return [_unknown_substitution(source, error, values)]


def cloudbuild_commands(path: Path = CLOUDBUILD) -> list[Command]:
    """The gcloud commands of cloudbuild.yaml's steps, then those shown in its comments."""
    text = path.read_text()
    config = yaml.safe_load(text) or {}
    try:
        values = cloud_build_substitutions(config)
    except KeyError as error:
        return [_unknown_substitution(f"{path.name}#substitutions", error,
                                      [*CLOUD_BUILD_BUILTINS, *(config.get("substitutions") or {})])]
    found = [command for index, step in enumerate(config.get("steps") or [])
             for command in _step_commands(f"{path.name}#{step.get('id', f'step{index}')}", step, values)]
    comments = ((n, line.strip()[1:]) for n, line in enumerate(text.splitlines(), 1) if line.strip().startswith("#"))
    for number, line in logical_lines(comments):
        if line.startswith("gcloud "):  # comments are prose: only lines that are a command
            found += shell_commands(f"{path.name}:{number}", line)
    return found


def discover() -> list[Command]:
    commands = cloudbuild_commands() if CLOUDBUILD.exists() else []
    return commands + [command for path in markdown_files() for command in markdown_commands(path)]


COMMANDS = discover()


# -------------------------------------------------------------------------------------------------- gcloud


@functools.lru_cache(maxsize=1)
def workspace() -> Path:
    """Where the commands run: the repository's top-level entries (linked) with a `../shared` beside them, as
    the docs assume, whatever folder this checkout sits in."""
    root = Path(tempfile.mkdtemp(prefix="placeid-gcloud-"))
    (root / "shared" / "data").mkdir(parents=True)
    (root / "shared" / "weights").mkdir()
    (root / "repo").mkdir()
    for entry in REPO_ROOT.iterdir():
        (root / "repo" / entry.name).symlink_to(entry)
    return root / "repo"


def run_gcloud(argv: tuple[str, ...], config_dir: Path) -> Outcome:
    """Run ``argv`` (starting with "gcloud") offline, without credentials, in a copy of the repository root."""
    (config_dir / "gce").write_text("False")  # "not on GCE" cached: `auth login` would look up the metadata server
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(DROPPED_ENV) or key.startswith("CLOUDSDK_PYTHON")}
    env.update(GCLOUD_ENV, CLOUDSDK_CONFIG=str(config_dir))
    with subprocess.Popen([str(GCLOUD), *argv[1:]], cwd=workspace(), env=env, stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as process:
        try:
            stderr = process.communicate(timeout=TIMEOUT_S)[1]
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # gcloud's own children too, so that its stderr ends
            return Outcome(None, process.communicate()[1])
    return Outcome(process.returncode, stderr)


def verdict(outcome: Outcome) -> str:
    """Empty when the outcome is accepted (see the module docstring), else what went wrong."""
    error = "\n".join(outcome.stderr.strip().splitlines()[:6])
    if outcome.returncode is None:
        return f"no answer within {TIMEOUT_S} s (a network call?):\n{error}"
    if outcome.returncode == 2 or USAGE_ERROR.search(outcome.stderr):
        return f"usage error (exit {outcome.returncode}):\n{error}"
    if outcome.returncode == 0 or NEEDS_CREDENTIALS.search(outcome.stderr):
        return ""
    return f"failed before needing credentials (exit {outcome.returncode}):\n{error}"


@pytest.fixture(scope="session")
def gcloud_outcomes(tmp_path_factory: pytest.TempPathFactory) -> Outcomes:
    """Every command found (and the self-tests' ones) run once, concurrently, each with its own config folder."""
    if not GCLOUD:
        pytest.fail("gcloud is not installed (or not on PATH): install the Google Cloud CLI to check the project's "
                    "gcloud command lines", pytrace=False)
    argvs = {command.argv for command in COMMANDS if command.argv} | {SELF_TEST_VALID, *SELF_TEST_USAGE_ERRORS.values()}
    with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 4)) as pool:
        futures = {argv: pool.submit(run_gcloud, argv, tmp_path_factory.mktemp("gcloud-config")) for argv in argvs}
    return {argv: future.result() for argv, future in futures.items()}


# --------------------------------------------------------------------------------------------------- tests


@pytest.mark.slow  # runs the gcloud CLI
@pytest.mark.parametrize("command", COMMANDS, ids=[command.id for command in COMMANDS])
def test_gcloud_accepts_the_command_line(command: Command, gcloud_outcomes: Outcomes) -> None:
    if command.problem:
        pytest.fail(command.problem, pytrace=False)
    problem = verdict(gcloud_outcomes[command.argv])
    if problem:
        pytest.fail(f"{command.source}: {shlex.join(command.argv)}\n{problem}", pytrace=False)


def test_commands_are_found_in_every_source_that_has_some() -> None:
    assert COMMANDS, "no gcloud command line found: the extraction is broken"
    mentioning = {CLOUDBUILD.name} if CLOUDBUILD.exists() and "gcloud" in CLOUDBUILD.read_text() else set()
    mentioning |= {path.relative_to(REPO_ROOT).as_posix() for path in markdown_files()
                   if any(re.search(r"\bgcloud\s+[a-z]", line) and not line.lstrip().startswith("#")
                          for _, line in fenced_shell_lines(path.read_text()))}
    missed = mentioning - {command.file for command in COMMANDS}
    assert not missed, f"gcloud lines but no command found in: {sorted(missed)}"


def test_shell_text_is_cut_into_gcloud_commands() -> None:
    markdown = "\n".join([
        "```bash", "# gcloud comment --ignored", "export TOKEN=$(gcloud auth print-identity-token)",
        "make x && gcloud run jobs execute JOB-NAME \\", "  --region $REGION --wait   # trailing comment",
        'curl -H "Bearer $(gcloud auth print-access-token)" "${URL:-http://x}" 2>/dev/null | gcloud topic x > out',
        "```", "```python", "gcloud not shell", "```"])
    found = list(logical_lines(fenced_shell_lines(markdown)))
    assert [n for n, _ in found] == [3, 4, 6]
    assert [argv for _, line in found for argv in gcloud_argvs(line)] == [
        ("gcloud", "auth", "print-identity-token"),
        ("gcloud", "run", "jobs", "execute", "job-name", "--region", "us-central1", "--wait"),
        ("gcloud", "topic", "x"),
        ("gcloud", "auth", "print-access-token"),
    ]
    config = {"substitutions": {"_A": "${_B}-$PROJECT_ID", "_B": "b"}, "options": {"dynamicSubstitutions": True}}
    values = cloud_build_substitutions(config)
    assert cloud_build_substitute("${_A}/$$HOME", values.__getitem__) == "b-dummy/$HOME"
    with pytest.raises(KeyError):
        cloud_build_substitute("${_UNKNOWN}", values.__getitem__)


@pytest.mark.slow  # runs the gcloud CLI
@pytest.mark.parametrize("bad_word", SELF_TEST_USAGE_ERRORS, ids=["unknown flag", "unknown command group"])
def test_the_checker_rejects_a_usage_error(bad_word: str, gcloud_outcomes: Outcomes) -> None:
    outcome = gcloud_outcomes[SELF_TEST_USAGE_ERRORS[bad_word]]
    assert verdict(outcome).startswith("usage error"), outcome.stderr
    assert bad_word in outcome.stderr


@pytest.mark.slow  # runs the gcloud CLI
def test_the_checker_accepts_a_valid_command(gcloud_outcomes: Outcomes) -> None:
    outcome = gcloud_outcomes[SELF_TEST_VALID]
    assert verdict(outcome) == "", outcome.stderr
    assert NEEDS_CREDENTIALS.search(outcome.stderr), "gcloud should stop at the missing credentials"
