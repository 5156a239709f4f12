"""Configuration: bad files stop the start with a message naming the key and the fix."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import tomli_w

from gateway.config import DEFAULT_CONFIG_PATH, apply_env, load_config, parse_config
from gateway.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
SVC = {"orders": {"topic": "orders.requests"}}


def _err(raw: dict) -> str:
    with pytest.raises(ConfigError) as exc:
        parse_config(raw)
    return str(exc.value)


def test_shipped_config_is_valid():
    cfg = load_config(DEFAULT_CONFIG_PATH, env={})
    assert set(cfg.services) == {"orders", "customers", "basket", "echo", "ticker"}
    assert cfg.services["customers"].timeout_ms == cfg.limits.default_timeout_ms


def test_unknown_key_is_named():
    msg = _err({"services": SVC, "kafka": {"bootstrap_server": ["x:1"]}})
    assert "kafka.bootstrap_server" in msg and "unknown key" in msg


def test_unknown_key_in_a_service_is_named():
    msg = _err({"services": {"orders": {"topic": "o", "timout_ms": 5}}})
    assert "services.orders" in msg and "timout_ms" in msg


def test_wrong_type_is_named():
    msg = _err({"services": SVC, "reply": {"partitions": "many"}})
    assert "reply.partitions" in msg and "integer" in msg.lower()


def test_heartbeat_must_fit_in_session_timeout():
    msg = _err({"services": SVC, "kafka": {"session_timeout_ms": 3000, "heartbeat_interval_ms": 2000}})
    assert "heartbeat_interval_ms (2000)" in msg and "3000" in msg


def test_reply_topic_cannot_be_a_request_topic():
    msg = _err({"services": {"orders": {"topic": "gateway.replies"}}})
    assert "reply topic" in msg


def test_json_key_needs_a_body_method():
    msg = _err({"services": {"orders": {"topic": "o", "methods": ["GET"], "key": {"source": "json", "field": "id"}}}})
    assert "POST, PUT or PATCH" in msg


def test_key_source_needs_its_detail():
    msg = _err({"services": {"orders": {"topic": "o", "key": {"source": "path"}}}})
    assert "segment" in msg


def test_reserved_and_duplicate_names():
    assert "healthz" in _err({"services": {"healthz": {"topic": "h"}}})
    assert "share request topic" in _err({"services": {"a": {"topic": "t"}, "b": {"topic": "t"}}})
    assert "at least one service" in _err({"services": {}})


def test_bad_bootstrap_server():
    assert "host:port" in _err({"services": SVC, "kafka": {"bootstrap_servers": ["localhost"]}})


def test_env_overrides_the_file():
    raw = apply_env({"services": SVC}, {"KAFKA_BOOTSTRAP_SERVERS": "a:1, b:2", "GATEWAY_REPLY_PARTITIONS": "8"})
    cfg = parse_config(raw)
    assert cfg.kafka.bootstrap_servers == ("a:1", "b:2") and cfg.reply.partitions == 8
    assert cfg.kafka.client == "kafka-python"                     # the default
    assert parse_config(apply_env({"services": SVC}, {"GATEWAY_KAFKA_CLIENT": "librdkafka"})).kafka.client \
        == "librdkafka"
    assert "kafka.client" in _err(apply_env({"services": SVC}, {"GATEWAY_KAFKA_CLIENT": "rdkafka"}))


def test_heroku_kafka_url(tmp_path):
    env = {"KAFKA_URL": "kafka+ssl://h1:9096,kafka+ssl://h2:9096", "KAFKA_TRUSTED_CERT": "-----BEGIN CERT-----"}
    cfg = parse_config(apply_env({"services": SVC}, env))
    assert cfg.kafka.bootstrap_servers == ("h1:9096", "h2:9096")
    assert cfg.kafka.security_protocol == "SSL"
    assert Path(cfg.kafka.ssl_cafile).read_text() == "-----BEGIN CERT-----"


def test_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(ConfigError, match="GATEWAY_CONFIG"):
        load_config(tmp_path / "nope.toml", env={})
    bad = tmp_path / "bad.toml"
    bad.write_text("[kafka\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad, env={})


def _run(argv: list[str], config: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {"GATEWAY_CONFIG": str(config), "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin"}
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_cli_check_config_fails_with_the_key(tmp_path):
    bad = tmp_path / "g.toml"
    bad.write_text(tomli_w.dumps({"services": {"orders": {"topic": "o", "timeout": 5}}}))
    res = _run([sys.executable, "-m", "gateway.cli", "check-config"], bad)
    assert res.returncode == 2
    assert "services.orders.timeout" in res.stderr and "unknown key" in res.stderr


def test_gunicorn_refuses_to_start_on_bad_config(tmp_path):
    bad = tmp_path / "g.toml"
    bad.write_text(tomli_w.dumps({"services": {"orders": {"topic": "o"}}, "reply": {"partitions": 0}}))
    res = _run([sys.executable, "-m", "gunicorn", "-c", "conf/gunicorn.conf.py", "--bind", "127.0.0.1:0",
                "gateway.wsgi:app"], bad)
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])  # the README promises exit code 2
    assert "reply.partitions" in res.stderr


def test_gateway_serve_refuses_to_start_on_bad_config(tmp_path):
    """The documented command (``gateway serve``, packaged gunicorn config) checks the file --config names."""
    bad = tmp_path / "g.toml"
    bad.write_text('[services.orders]\ntopic = "o"\n[reply]\npartitions = 0\n')
    res = _run([sys.executable, "-m", "gateway.cli", "serve", "--config", str(bad), "--bind", "127.0.0.1:0"],
               DEFAULT_CONFIG_PATH)   # --config wins over GATEWAY_CONFIG
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    assert "reply.partitions" in res.stderr and str(bad) in res.stderr


@pytest.mark.parametrize("load", ["runpy.run_path('conf/gunicorn.conf.py')", "import gateway.serve.gunicorn_conf",
                                  "import gateway.serve.worker"])
def test_gunicorn_config_and_app_import_do_not_import_kafka(load):
    """kafka-python must be imported only after gevent patched (in the worker), never in the master: not by the
    gunicorn config (the example deployment's or the packaged one), the worker class, or the app's import."""
    code = (f"import runpy, sys; {load}; import gateway.wsgi; "
            "bad = [m for m in sys.modules if m == 'kafka' or m.startswith('kafka.')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    res = _run([sys.executable, "-c", code], DEFAULT_CONFIG_PATH)
    assert res.returncode == 0, res.stdout + res.stderr


def test_config_file_in_use_and_packaged_defaults(tmp_path):
    """GATEWAY_CONFIG, else the source tree's conf/gateway.toml, else the packaged defaults (a wheel install),
    which are a valid config for brokers on localhost:9092."""
    from gateway import serve

    assert serve.config_in_use({"GATEWAY_CONFIG": str(tmp_path / "x.toml")}) == tmp_path / "x.toml"
    assert serve.config_in_use({}) == DEFAULT_CONFIG_PATH   # this is a source tree
    env: dict[str, str] = {}
    assert serve.use_packaged_defaults(env) == DEFAULT_CONFIG_PATH and env["GATEWAY_CONFIG"] == str(DEFAULT_CONFIG_PATH)
    cfg = load_config(serve.PACKAGED_CONFIG, env={})
    assert list(cfg.kafka.bootstrap_servers) == ["localhost:9092"] and list(cfg.services) == ["echo"]
    assert serve.gunicorn_argv(["127.0.0.1:1"], 3, ["--timeout", "5"])[2:] == [
        "gunicorn", "-c", "python:gateway.serve.gunicorn_conf", "--bind", "127.0.0.1:1", "--workers", "3",
        "--timeout", "5", "gateway.wsgi:app"]


def test_readme_configuration_table_is_the_schema():
    from gateway.config import config_table

    readme = (ROOT / "README.md").read_text()
    section = readme.split("<!-- config-table:start -->\n", 1)[1].split("<!-- config-table:end -->", 1)[0]
    assert section.strip() == config_table().strip(), "README out of date: paste `gateway config-docs` output"


def test_librdkafka_properties_are_passed_as_given_and_only_plain_values_accepted():
    cfg = parse_config({"services": SVC, "kafka": {"librdkafka": {"fetch.queue.backoff.ms": 10, "debug": "fetch"}}})
    assert cfg.kafka.librdkafka == {"fetch.queue.backoff.ms": 10, "debug": "fetch"}
    assert parse_config({"services": SVC}).kafka.librdkafka == {}
    msg = _err({"services": SVC, "kafka": {"librdkafka": {"debug": ["fetch"]}}})
    assert "kafka.librdkafka" in msg and "debug" in msg and "strings, numbers or booleans" in msg
