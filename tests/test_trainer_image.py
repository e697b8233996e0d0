"""The training job's image (training/Dockerfile): static checks, and the image itself emulated on this machine.

No container runtime can build it here (no Docker daemon; podman can build but not pull the base image without the
internet), so the emulation follows the Dockerfile instruction by instruction: the build context is a clean copy of
the repository's files as `docker build` would see them (.dockerignore applied), a fresh root-owned venv plays the
base image's system Python, the Dockerfile's own `pip` commands install into it, the user it creates is created here
with the same uid (`useradd`, so the tests run as root, as CI does) and the ENTRYPOINT runs as that user, in the
image's WORKDIR, with the image's ENV (absolute paths inside a temporary image root; /data holds a read-only copy of
the shared data bucket's layout). Any instruction or RUN command the emulator does not know fails the test.

training/requirements.txt (the image's pinned dependencies) is generated from .venv:

    .venv/bin/python tests/test_trainer_image.py --write-requirements
"""

from __future__ import annotations

import grp
import importlib.metadata
import json
import os
import pwd
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
# Another Dockerfile may be checked with the same tests (for example the image before a change).
DOCKERFILE = Path(os.environ.get("PLACEID_TRAINER_DOCKERFILE", REPO / "training" / "Dockerfile"))
REQUIREMENTS = REPO / "training" / "requirements.txt"
REGENERATE = ".venv/bin/python tests/test_trainer_image.py --write-requirements"
BASE_TAG = "python:3.11.11-slim-bookworm"
LOCAL_PACKAGES = {"placeid", "placeid-edge"}  # installed from this repository, not from the pinned file
# The image's platform: Cloud Run (linux/amd64), the base image's CPython 3.11.
TARGET = {**default_environment(), "sys_platform": "linux", "platform_system": "Linux", "os_name": "posix",
          "platform_machine": "x86_64", "python_version": "3.11", "python_full_version": "3.11.11",
          "implementation_name": "cpython", "platform_python_implementation": "CPython"}
TRAIN_PLACES = "eiffel-tower,colosseum,petra,taj-mahal"


# -- the pinned dependencies -------------------------------------------------------------------------

def _applies(requirement: Requirement, extras: set[str]) -> bool:
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate({**TARGET, "extra": extra}) for extra in (extras or {""}))


def _declared() -> list[Requirement]:
    """What placeid[train] and placeid-edge declare (their pyproject.toml files, not possibly stale metadata)."""
    root = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    edge = tomllib.loads((REPO / "edge" / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in root["dependencies"] + root["optional-dependencies"]["train"]
            + edge["dependencies"]]


def venv_closure() -> dict[str, str]:
    """Every distribution placeid[train] + placeid-edge need on the image's platform, name -> the version installed
    in this interpreter's environment (.venv); markers evaluated for linux/x86_64/CPython 3.11."""
    pins: dict[str, str] = {}
    seen: set[tuple[str, frozenset]] = set()
    todo: list[tuple[Requirement, set[str]]] = [(r, set()) for r in _declared()]
    while todo:
        requirement, parent_extras = todo.pop()
        if not _applies(requirement, parent_extras):
            continue
        name = canonicalize_name(requirement.name)
        if name in LOCAL_PACKAGES:
            continue  # their own dependencies are in _declared()
        key = (name, frozenset(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            raise LookupError(f"{name} ({requirement}) is not installed in {sys.prefix}: run `make setup`, then "
                              f"`{REGENERATE}`") from None
        if not requirement.specifier.contains(dist.version, prereleases=True):
            raise LookupError(f"{sys.prefix} has {name} {dist.version}, which does not satisfy {requirement}: run "
                              f"`make setup`, then `{REGENERATE}`")
        pins[name] = dist.version
        todo.extend((Requirement(r), set(requirement.extras)) for r in dist.requires or [])
    return dict(sorted(pins.items()))


def requirements_text(pins: dict[str, str]) -> str:
    header = [
        "# The training image's dependencies (training/Dockerfile installs them with --no-deps, then runs pip check):",
        "# the full closure of placeid[train] + placeid-edge on linux/x86_64, CPython 3.11, pinned to the versions in",
        "# .venv, which the test suite runs. Generated; do not edit. After changing the dependencies in pyproject.toml",
        "# or edge/pyproject.toml, run `make setup`, then regenerate it:",
        f"#   {REGENERATE}",
        "# tests/test_trainer_image.py fails while this file and the closure in .venv differ. `make setup` installs",
        "# .venv under these pins (pip -c), so a new upstream release changes nothing until this file is regenerated.",
    ]
    return "\n".join(header + [f"{name}=={version}" for name, version in pins.items()]) + "\n"


def read_pins(path: Path = REQUIREMENTS) -> dict[str, str]:
    pins = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!_-]+)", line)
        assert match, f"{path.name}:{number}: {line!r} is not pinned as NAME==VERSION (regenerate: {REGENERATE})"
        name = canonicalize_name(match[1])
        assert name not in pins, f"{path.name}:{number}: {name} is pinned twice"
        pins[name] = match[2]
    return pins


# -- the Dockerfile ----------------------------------------------------------------------------------

@dataclass
class Instruction:
    keyword: str
    args: str
    line: int


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined; comments (and parser directives) dropped."""
    instructions, buffer, start = [], "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not buffer):
            continue
        if not buffer:
            start = number
        if stripped.endswith("\\"):
            buffer += stripped[:-1] + " "
            continue
        buffer += stripped
        keyword, _, args = buffer.partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip(), start))
        buffer = ""
    assert not buffer, "the Dockerfile ends inside a continued line"
    return instructions


def shell_commands(args: str) -> list[list[str]]:
    """A RUN line's `a && b && c` as argument lists; anything but && between commands is refused."""
    lexer = shlex.shlex(args, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token == "&&":
            commands.append([])
        elif token and set(token) <= set("();<>|&"):
            pytest.fail(f"RUN {args!r}: the emulator only knows commands joined by && (got {token!r})")
        else:
            commands[-1].append(token)
    return [command for command in commands if command]


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(item, str) for item in value), args
    return value


def env_pairs(args: str) -> dict[str, str]:
    assert "$" not in args, f"ENV {args!r}: variable substitution is not emulated"
    tokens = shlex.split(args)
    if tokens and "=" not in tokens[0]:  # legacy ENV KEY VALUE
        return {tokens[0]: " ".join(tokens[1:])}
    return dict(token.split("=", 1) for token in tokens)


@dataclass
class Dockerfile:
    instructions: list[Instruction]

    @classmethod
    def read(cls, path: Path = DOCKERFILE) -> "Dockerfile":
        return cls(parse_dockerfile(path.read_text()))

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        assert found, f"{DOCKERFILE} has no {keyword}"
        return found[-1]

    @property
    def env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for instruction in self.all("ENV"):
            env.update(env_pairs(instruction.args))
        return env

    @property
    def user(self) -> str:
        return self.last("USER").args.split(":")[0]

    @property
    def workdir(self) -> str:
        path = PurePosixPath("/")
        for instruction in self.all("WORKDIR"):
            path = path / instruction.args
        return str(path)

    def commands(self) -> list[tuple[Instruction, list[str]]]:
        return [(i, command) for i in self.all("RUN") for command in shell_commands(i.args)]


def useradd_options(command: list[str]) -> dict:
    """The parts of a `useradd` command the image depends on."""
    options = {"name": command[-1], "uid": None, "user_group": False, "create_home": False}
    args = iter(command[1:-1])
    for arg in args:
        if arg in ("--uid", "-u"):
            options["uid"] = int(next(args))
        elif arg.startswith("--uid="):
            options["uid"] = int(arg.split("=", 1)[1])
        elif arg in ("--user-group", "-U"):
            options["user_group"] = True
        elif arg in ("--create-home", "-m"):
            options["create_home"] = True
        elif arg in ("--no-log-init", "-l", "--system", "-r"):
            pass
        elif arg in ("--shell", "-s"):
            next(args)
        else:
            pytest.fail(f"useradd option {arg!r} is not emulated: teach {Path(__file__).name}")
    return options


# -- .dockerignore -----------------------------------------------------------------------------------

def _glob_regex(pattern: str) -> re.Pattern:
    """moby/patternmatcher: `**` spans directories, `*` and `?` stay within one path element."""
    out, i = "", 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                out += "(?:.*/)?"
                i += 1
            else:
                out += ".*"
            continue
        if char == "*":
            out += "[^/]*"
        elif char == "?":
            out += "[^/]"
        elif char == "[":
            end = pattern.index("]", i + 1)
            body = pattern[i + 1:end]
            out += "[" + ("^" + body[1:] if body.startswith(("!", "^")) else body) + "]"
            i = end
        elif char == "\\" and i + 1 < len(pattern):
            i += 1
            out += re.escape(pattern[i])
        else:
            out += re.escape(char)
        i += 1
    return re.compile(out + r"\Z")


def dockerignore_rules(path: Path = REPO / ".dockerignore") -> list[tuple[bool, re.Pattern, str]]:
    rules = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = os.path.normpath(line[1:].strip() if negate else line).lstrip("/")
        rules.append((negate, _glob_regex(pattern), line))
    return rules


def ignored(relpath: str, rules) -> bool:
    """Whether `docker build` leaves this context path out: the last rule matching it or a parent folder wins."""
    parts = relpath.split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    excluded = False
    for negate, regex, _ in rules:
        if any(regex.match(candidate) for candidate in candidates):
            excluded = not negate
    return excluded


def build_context() -> list[str]:
    """A clean checkout's files (tracked, plus new files git does not ignore) that `docker build .` would send."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            check=True, capture_output=True).stdout.decode().split("\0")
    rules = dockerignore_rules()
    return sorted(p for p in set(listed) if p and (REPO / p).is_file() and not ignored(p, rules))


# -- static checks -----------------------------------------------------------------------------------

def test_base_image_is_pinned_by_tag_and_digest():
    image = Dockerfile.read().all("FROM")
    assert len(image) == 1, "one stage"
    assert re.fullmatch(re.escape(BASE_TAG) + r"@sha256:[0-9a-f]{64}", image[0].args.split()[0]), (
        f"FROM {image[0].args}: pin {BASE_TAG} by its multi-arch index digest too (see the Dockerfile's comment)")


def test_runs_as_the_user_it_creates_in_a_folder_that_user_owns():
    dockerfile = Dockerfile.read()
    users = {useradd_options(c)["name"]: useradd_options(c) for _, c in dockerfile.commands() if c[0] == "useradd"}
    user = dockerfile.user
    assert user not in ("root", "0"), "the job must not run as root"
    assert user in users, f"USER {user} is not created by a RUN useradd ({sorted(users)})"
    assert users[user]["uid"] not in (None, 0), "give the job's user a fixed, non-zero uid"
    # The final WORKDIR, where `placeid train` writes runs/<timestamp>, is chowned to that user by a RUN.
    owned = []
    for _, command in dockerfile.commands():
        args = [arg for arg in command[1:] if not arg.startswith("-")]
        if command[0] == "chown" and re.fullmatch(rf"({re.escape(user)}|{users[user]['uid']})(:.+)?", args[0]):
            owned += [str(PurePosixPath("/") / path) for path in args[1:]]
    assert dockerfile.workdir in owned, (
        f"WORKDIR {dockerfile.workdir} must be owned by {user} (RUN mkdir -p DIR && chown {user}:{user} DIR): "
        "placeid train writes its run folder in the working directory")
    # ... and everything installed before USER stays root's: no COPY --chown, no pip after USER.
    user_at = dockerfile.last("USER").line
    assert all("--chown" not in i.args for i in dockerfile.all("COPY")), "installed code must stay root-owned"
    assert all(i.line < user_at for i in dockerfile.all("RUN") + dockerfile.all("COPY")), (
        "build (COPY, RUN pip) as root, before USER")


def test_env_points_data_and_weights_at_the_mounted_bucket():
    env = Dockerfile.read().env
    assert env.get("PLACEID_DATA") == "/data/data", env
    assert env.get("PLACEID_WEIGHTS") == "/data/weights", env


def test_installs_exactly_the_pinned_requirements():
    commands = [c for _, c in Dockerfile.read().commands() if c[0] == "pip"]
    assert ["pip", "install", "--no-deps", "-r", "training/requirements.txt"] in commands, commands
    local = [c for c in commands if c[:3] == ["pip", "install", "--no-deps"] and "./edge" in c]
    assert local and set(local[0][3:]) == {"./edge", "."}, f"install the local packages with --no-deps: {commands}"
    assert commands[-1] == ["pip", "check"], "end with pip check"
    assert not any(c[:2] == ["pip", "install"] and "--no-deps" not in c for c in commands), (
        f"every pip install must be --no-deps (versions come from training/requirements.txt): {commands}")


def test_requirements_pin_the_closure_of_placeid_train():
    pins = read_pins()
    closure = venv_closure()
    missing = {name: version for name, version in closure.items() if name not in pins}
    extra = sorted(set(pins) - set(closure))
    changed = {name: (pins[name], version) for name, version in closure.items() if pins.get(name) not in
               (None, version)}
    assert not (missing or extra or changed), (
        f"training/requirements.txt is out of date with .venv (missing {missing}, not needed {extra}, "
        f"file vs venv {changed}): run `make setup`, then `{REGENERATE}`")
    for requirement in _declared():
        name = canonicalize_name(requirement.name)
        if name not in LOCAL_PACKAGES and _applies(requirement, set()):
            assert requirement.specifier.contains(pins[name], prereleases=True), (requirement, pins[name])


def test_dockerignore_keeps_the_context_small_and_free_of_secrets():
    rules = dockerignore_rules()
    for path in ["shared/data/world30/images/petra/a.jpg", "shared/weights/w.h5", "runs/20250101T000000/m.tflite",
                 ".placeid/firestore.log", "infra/terraform.tfstate", "infra/terraform.tfstate.backup",
                 "terraform.tfstate", "infra/.terraform/providers/p", ".terraform/x", ".git/config", ".venv/bin/python",
                 ".venv-tools/x", "dist/ingest.zip", "tests/test_cli.py", "placeid/__pycache__/cli.cpython-311.pyc",
                 "placeid.egg-info/PKG-INFO", "build/lib/x.py", ".pytest_cache/v", "collect-report.json",
                 ".env", "infra/terraform.tfvars", "certs/server.key", "sa-key.json", "application_default_credentials.json"]:
        assert ignored(path, rules), f".dockerignore lets {path} into the build context"
    for path in ["pyproject.toml", "README.md", "edge/pyproject.toml", "edge/placeid_edge/__init__.py",
                 "placeid_cli/main.py", "placeid/data/seoul12.json", "training/train.py", "training/requirements.txt"]:
        assert not ignored(path, rules), f".dockerignore leaves out {path}, which the image needs"
    context = build_context()
    assert "training/requirements.txt" in context and "placeid_cli/main.py" in context


# -- the emulated image ------------------------------------------------------------------------------

@dataclass
class EmulatedImage:
    root: Path  # the image's / lives here
    dockerfile: Dockerfile
    uid: int = -1
    gid: int = -1
    user: str = ""
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    created_user: bool = False

    def path(self, image_path: str) -> Path:
        return self.root / image_path.lstrip("/")

    @property
    def workdir(self) -> Path:
        return self.path(self.dockerfile.workdir)

    def runtime_env(self, **overrides: str) -> dict[str, str]:
        """The container's environment: the image's ENV (absolute paths inside the image root), PATH, HOME."""
        env = {key: str(self.path(value)) if value.startswith("/") else value
               for key, value in self.dockerfile.env.items()}
        env.update(PATH=f"{self.path('/usr/local/bin')}:/usr/sbin:/usr/bin:/sbin:/bin", LANG="C.UTF-8",
                   HOME=str(self.path(f"/home/{self.user}")))
        env.update(overrides)
        return env

    def run_as_user(self, argv: list[str], cwd: Path | None = None, timeout: float = 300, **env: str):
        executable = shutil.which(argv[0], path=self.runtime_env()["PATH"])
        assert executable and executable.startswith(str(self.root)), f"{argv[0]} is not in the emulated image"
        started = time.monotonic()
        done = subprocess.run(["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups", "--",
                               executable, *argv[1:]], cwd=cwd or self.workdir, env=self.runtime_env(**env),
                              capture_output=True, text=True, timeout=timeout)
        return done, time.monotonic() - started


def _usable_python(uid: int, gid: int) -> str:
    """A CPython 3.11 the unprivileged user can execute (this venv's may live under root's 0700 home)."""
    candidates = [shutil.which("python3.11"), "/usr/local/bin/python3.11", "/usr/bin/python3.11",
                  getattr(sys, "_base_executable", None)]
    for candidate in dict.fromkeys(c for c in candidates if c and Path(c).exists()):
        real = str(Path(candidate).resolve())
        probe = subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--", real, "-c",
                                "import sys, venv; assert sys.version_info[:2] == (3, 11)"], capture_output=True)
        if probe.returncode == 0:
            return real
    pytest.fail(f"no CPython 3.11 that uid {uid} may run (tried {candidates}): install Debian's python3.11-venv")


def _create_user(image: EmulatedImage, options: dict) -> None:
    name, uid = options["name"], options["uid"]
    if uid is None:
        pytest.fail(f"useradd {name} without --uid: the emulation (and Cloud Run file ownership) needs a fixed uid")
    try:
        existing = pwd.getpwnam(name)
    except KeyError:
        existing = None
    if existing is None:
        try:
            holder = pwd.getpwuid(uid).pw_name
            pytest.fail(f"uid {uid} already belongs to {holder!r} on this machine: cannot create the image's {name}")
        except KeyError:
            pass
        done = subprocess.run(["useradd", "--uid", str(uid), "--user-group" if options["user_group"] else "-N",
                               "--no-create-home", "--home-dir", str(image.path(f"/home/{name}")), name],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.fail(f"useradd {name} (uid {uid}) failed, so the image cannot be emulated: {done.stderr.strip()} "
                        "(the emulation creates the image's user and needs root, as in CI)")
        image.created_user = True
        existing = pwd.getpwnam(name)
    elif existing.pw_uid != uid:
        pytest.fail(f"a user {name!r} exists here with uid {existing.pw_uid}, not the image's {uid}")
    image.user, image.uid, image.gid = name, existing.pw_uid, existing.pw_gid
    if options["create_home"]:
        home = image.path(f"/home/{name}")
        home.mkdir(parents=True, exist_ok=True)
        os.chown(home, image.uid, image.gid)


def _owner(spec: str) -> tuple[int, int]:
    user, _, group = spec.partition(":")
    uid = int(user) if user.isdigit() else pwd.getpwnam(user).pw_uid
    gid = (int(group) if group.isdigit() else grp.getgrnam(group).gr_gid) if group else pwd.getpwuid(uid).pw_gid
    return uid, gid


def _copy(image: EmulatedImage, args: str, cwd: str, context: list[str]) -> None:
    tokens = shlex.split(args)
    flags = [t for t in tokens if t.startswith("--")]
    sources, dest = [t for t in tokens if not t.startswith("--")][:-1], tokens[-1]
    owner = None
    for flag in flags:
        if flag.startswith("--chown="):
            owner = _owner(flag.split("=", 1)[1])
        else:
            pytest.fail(f"COPY {flag} is not emulated")
    target = image.path(str(PurePosixPath(cwd) / dest))
    into_dir = len(sources) > 1 or dest.endswith("/") or dest in (".", "./")
    for source in sources:
        assert not set(source) & set("*?["), f"COPY {source}: wildcards are not emulated"
        prefix = os.path.normpath(source).lstrip("/")
        prefix = "" if prefix == "." else prefix
        is_dir = prefix == "" or (REPO / prefix).is_dir()
        files = [f for f in context if f == prefix or prefix == "" or f.startswith(prefix + "/")]
        if not files:
            pytest.fail(f"COPY {source}: nothing in the build context (left out by .dockerignore?)")
        for relpath in files:
            if is_dir:
                destination = target / os.path.relpath(relpath, prefix or ".")
            else:
                destination = target / Path(relpath).name if into_dir else target
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / relpath, destination)
            if owner:
                os.chown(destination, *owner)


def _run(image: EmulatedImage, instruction: Instruction, cwd: str) -> None:
    python = str(image.path("/usr/local/bin/python"))
    # Install as root, as the build does, with this machine's package index settings; the image's
    # PIP_NO_CACHE_DIR is dropped so that repeated runs reuse pip's cache.
    build_env = {**{k: v for k, v in os.environ.items() if k.startswith(("PIP_", "HTTP", "HTTPS", "NO_PROXY"))
                    or k.lower() in ("http_proxy", "https_proxy", "no_proxy")},
                 **{k: v for k, v in image.dockerfile.env.items() if k != "PIP_NO_CACHE_DIR"},
                 "PATH": f"{image.path('/usr/local/bin')}:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root"}
    for command in shell_commands(instruction.args):
        program = command[0]
        if program == "useradd":
            _create_user(image, useradd_options(command))
        elif program == "mkdir":
            for arg in command[1:]:
                if not arg.startswith("-"):
                    image.path(str(PurePosixPath(cwd) / arg)).mkdir(parents=True, exist_ok=True)
        elif program == "chown":
            args = [a for a in command[1:] if not a.startswith("-")]
            assert "-R" not in command, "chown -R is not emulated"
            for path in args[1:]:
                os.chown(image.path(str(PurePosixPath(cwd) / path)), *_owner(args[0]))
        elif program in ("pip", "pip3") or command[:3] in (["python", "-m", "pip"], ["python3", "-m", "pip"]):
            args = command[1:] if program.startswith("pip") else command[3:]
            started = time.monotonic()
            done = subprocess.run([python, "-m", "pip", *args], cwd=image.path(cwd), env=build_env,
                                  capture_output=True, text=True)
            image.timings[f"RUN pip {' '.join(args)}"] = time.monotonic() - started
            assert done.returncode == 0, f"RUN pip {' '.join(args)} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
        else:
            pytest.fail(f"line {instruction.line}: RUN command {command!r} is not emulated: teach "
                        f"{Path(__file__).name}")


def _mount_data(image: EmulatedImage) -> None:
    """/data: a read-only, root-owned copy of the data bucket's layout (../shared), as the job mounts it."""
    from placeid.config import Settings

    settings = Settings.from_env()
    data, weights = settings.data_dir, settings.weights_dir
    if not (data / "world30" / "images").is_dir() or not weights.is_dir():
        pytest.fail(f"shared data not found at {data} (weights {weights}): set PLACEID_DATA / PLACEID_WEIGHTS")
    mount = image.path("/data")
    shutil.copytree(data / "world30", mount / "data" / "world30", ignore=shutil.ignore_patterns("README*"))
    if (data / "negatives").is_dir():
        shutil.copytree(data / "negatives", mount / "data" / "negatives")
    shutil.copytree(weights, mount / "weights")
    for folder, dirs, files in os.walk(mount):
        for name in files:
            os.chmod(os.path.join(folder, name), 0o444)
        os.chmod(folder, 0o555)


@pytest.fixture(scope="module")
def image():
    """The image of DOCKERFILE, emulated under a temporary root; its user is removed afterwards if created here."""
    if os.geteuid() != 0:
        pytest.fail("the image emulation creates the image's user (useradd) and switches to it: run as root, as CI")
    if not shutil.which("setpriv"):
        pytest.fail("setpriv (util-linux) is needed to run the image's ENTRYPOINT as its user")
    dockerfile = Dockerfile.read()
    root = Path(tempfile.mkdtemp(prefix="placeid-image-", dir="/tmp"))
    root.chmod(0o755)  # the user must reach its WORKDIR and the installed code, as in the image
    emulated = EmulatedImage(root=root, dockerfile=dockerfile)
    old_umask = os.umask(0o022)
    started = time.monotonic()
    try:
        context = build_context()
        cwd = "/"
        for instruction in dockerfile.instructions:
            keyword = instruction.keyword
            if keyword == "FROM":
                # The base image's system Python: a fresh root-owned venv at /usr/local (its bin/ is first on PATH).
                t0 = time.monotonic()
                python = _usable_python(65534, 65534)
                subprocess.run([python, "-m", "venv", str(emulated.path("/usr/local"))], check=True)
                emulated.timings["FROM (venv)"] = time.monotonic() - t0
            elif keyword == "ENV" or keyword in ("LABEL", "ARG", "EXPOSE"):
                pass  # ENV is read as a whole (Dockerfile.env); no ENV value here depends on build order
            elif keyword == "RUN":
                _run(emulated, instruction, cwd)
            elif keyword == "WORKDIR":
                cwd = str(PurePosixPath(cwd) / instruction.args)
                emulated.path(cwd).mkdir(parents=True, exist_ok=True)  # created as root when missing, like docker
            elif keyword == "COPY":
                _copy(emulated, instruction.args, cwd, context)
            elif keyword == "USER":
                spec = instruction.args.split(":")[0]
                assert spec == emulated.user or spec == str(emulated.uid), f"USER {spec} was not created"
            elif keyword == "ENTRYPOINT":
                emulated.entrypoint = exec_form(instruction.args)
            elif keyword == "CMD":
                emulated.cmd = exec_form(instruction.args)
            else:
                pytest.fail(f"line {instruction.line}: {keyword} is not emulated")
        _mount_data(emulated)
        emulated.timings["build (total)"] = time.monotonic() - started
        print("\nemulated image build:", {k: round(v, 1) for k, v in emulated.timings.items()})
        yield emulated
    finally:
        os.umask(old_umask)
        if emulated.created_user:
            subprocess.run(["userdel", emulated.user], capture_output=True)
            if emulated.user in [g.gr_name for g in grp.getgrall()]:
                subprocess.run(["groupdel", emulated.user], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow  # the emulated image: a venv, pip, training
def test_image_runs_the_cli_as_its_user_with_root_owned_code(image):
    assert image.entrypoint[:3] == ["placeid", "--target", "cloud"] and image.cmd[:1] == ["train"], (
        image.entrypoint, image.cmd)
    done, _ = image.run_as_user(image.entrypoint + ["train", "--help"], timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "--folder" in done.stdout and "--promote" in done.stdout
    probe = ("import pathlib, placeid, training\n"
             "source = pathlib.Path(placeid.__file__)\n"
             "print(source)\n"
             "try:\n    open(source, 'a')\nexcept PermissionError:\n    print('read-only')\n")
    done, _ = image.run_as_user(["python", "-c", probe], timeout=60)
    assert done.returncode == 0, done.stderr
    source, verdict = done.stdout.split()
    assert source.startswith(str(image.path("/usr/local/lib"))), f"placeid imported from {source}, not site-packages"
    assert verdict == "read-only" and Path(source).stat().st_uid == 0
    assert image.workdir.stat().st_uid == image.uid, f"{image.dockerfile.workdir} is not owned by {image.user}"


def _train_args(image: EmulatedImage, limit: int = 6) -> list[str]:
    data = image.runtime_env()["PLACEID_DATA"]  # $PLACEID_DATA as the job sees it (the mounted bucket)
    return ["train", "--folder", f"{data}/world30/images", "--catalog", f"{data}/world30/places.json", "--fast",
            "--limit-per-place", str(limit), "--places", TRAIN_PLACES, "--min-int8-agreement", "0.5"]


@pytest.mark.slow  # the emulated image: a venv, pip, training
def test_image_trains_as_its_user_into_its_workdir(image):
    before = set((image.workdir / "runs").glob("*"))
    done, seconds = image.run_as_user(image.entrypoint + _train_args(image), timeout=400)
    output = done.stdout + done.stderr
    print(f"\ntraining run as {image.user}: {seconds:.0f} s")
    assert done.returncode == 0, output[-4000:]
    assert re.search(r"\d+ photos of 4 places, [1-9]\d* negatives", output), output[-2000:]  # from $PLACEID_DATA
    runs = set((image.workdir / "runs").glob("*")) - before
    assert len(runs) == 1, runs
    run = runs.pop()
    for name in ("manifest.json", "model_int8.tflite"):
        assert (run / name).is_file(), f"{name} missing from {run}: {sorted(p.name for p in run.iterdir())}"
        assert (run / name).stat().st_uid == image.uid
    assert run.stat().st_uid == image.uid
    assert json.loads((run / "manifest.json").read_text())["model_file"] == "model_int8.tflite"


@pytest.mark.slow  # the emulated image: a venv, pip, training
def test_image_fails_fast_without_backbone_weights(image):
    empty = image.path("/empty-weights")
    empty.mkdir(mode=0o555, exist_ok=True)
    done, seconds = image.run_as_user(image.entrypoint + _train_args(image), timeout=120,
                                      PLACEID_WEIGHTS=str(empty))
    output = done.stdout + done.stderr
    assert done.returncode != 0 and "backbone weights not found" in output, output[-3000:]
    assert seconds < 30, f"took {seconds:.0f} s to notice the missing weights"


@pytest.mark.slow  # the emulated image: a venv, pip, training
def test_image_user_cannot_train_in_a_root_owned_workdir(image):
    """What `WORKDIR /app` (root-owned) did to the job: it fails at once, so the WORKDIR's owner matters."""
    read_only = image.path("/app")
    read_only.mkdir(mode=0o755, exist_ok=True)
    assert read_only.stat().st_uid == 0
    done, seconds = image.run_as_user(image.entrypoint + _train_args(image), cwd=read_only,
                                      timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode != 0 and "cannot write" in output, output[-3000:]
    assert seconds < 30, f"took {seconds:.0f} s to notice the unwritable output folder"


if __name__ == "__main__":
    if sys.argv[1:] != ["--write-requirements"]:
        sys.exit(f"usage: {REGENERATE}")
    REQUIREMENTS.write_text(requirements_text(venv_closure()))
    print(f"wrote {REQUIREMENTS.relative_to(REPO)} ({len(read_pins())} pins)")
