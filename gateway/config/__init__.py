"""Configuration: one marshmallow schema, unknown keys rejected, units in names, env overrides on top.

The file is TOML (``conf/gateway.toml`` unless ``GATEWAY_CONFIG`` names another). Environment variables override
it, twelve-factor style, so a Procfile deployment needs no file edits:

``KAFKA_BOOTSTRAP_SERVERS``  kafka.bootstrap_servers (comma-separated host:port)
``KAFKA_URL``                Heroku's form (``kafka+ssl://h1:9096,kafka+ssl://h2:9096``), used when the above is unset;
                             with ``KAFKA_TRUSTED_CERT``, ``KAFKA_CLIENT_CERT``, ``KAFKA_CLIENT_CERT_KEY`` (PEM text)
``GATEWAY_REPLY_PARTITIONS`` reply.partitions
``GATEWAY_KAFKA_CLIENT``     kafka.client (``kafka-python`` or ``librdkafka``)
``PORT``, ``WEB_CONCURRENCY`` are read by ``conf/gunicorn.conf.py``.

Every error names the key and says what to change; :func:`load_config` raises :class:`ConfigError`.

The package: :mod:`.schema` (marshmallow, unknown keys rejected, relationships checked), :mod:`.sections` (the
typed, frozen sections the code reads), :mod:`.docs` (the README's table, generated from the schema); this module
reads the file and the environment.
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any, Mapping

import tomllib
from marshmallow import ValidationError

from ..errors import ConfigError
from .docs import config_table, schema_docs
from .schema import HTTP_METHODS, RESERVED_NAMES, GatewaySchema
from .sections import (
    AnswerOn,
    AsyncSettings,
    Config,
    HttpSettings,
    KafkaSettings,
    KeySpec,
    LimitsSettings,
    ReplySettings,
    ServiceConfig,
    StateSettings,
    WebsocketSettings,
)

__all__ = ["AnswerOn", "AsyncSettings", "Config", "ConfigError", "HTTP_METHODS", "HttpSettings", "KafkaSettings",
           "KeySpec", "LimitsSettings", "RESERVED_NAMES", "ReplySettings", "ServiceConfig", "StateSettings",
           "WebsocketSettings", "apply_env", "config_path", "config_table", "load_config", "parse_config",
           "schema_docs"]

# the source tree's example deployment (an editable install, a run from the repository) ...
DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent.parent.parent / "conf" / "gateway.toml"
# ... else the defaults packaged with the wheel (brokers on localhost:9092, one echo service)
PACKAGED_CONFIG = Path(__file__).resolve().parent.parent / "serve" / "defaults.toml"


def _flatten_errors(messages: Any, prefix: str = "") -> list[str]:
    out: list[str] = []
    if isinstance(messages, dict):
        for key, value in messages.items():
            if key in ("_schema", "value"):  # schema-level errors; Dict fields nest values under "value"
                path = prefix or str(key)
            else:
                path = f"{prefix}.{key}" if prefix else str(key)
            out.extend(_flatten_errors(value, path))
    elif isinstance(messages, list):
        for m in messages:
            out.extend(_flatten_errors(m, prefix))
    else:
        text = str(messages)
        if text == "Unknown field.":
            text = "unknown key; remove it or check its spelling (see the configuration table in the README)"
        out.append(f"{prefix}: {text}")
    return out


def _heroku_kafka(env: Mapping[str, str], kafka: dict[str, Any]) -> None:
    urls = [u.strip() for u in env["KAFKA_URL"].split(",") if u.strip()]
    kafka["bootstrap_servers"] = [re.sub(r"^[a-z+]+://", "", u) for u in urls]
    if any(u.startswith("kafka+ssl://") for u in urls):
        kafka["security_protocol"] = "SSL"
        pem_dir = Path(tempfile.mkdtemp(prefix="gateway-kafka-"))
        for var, opt in (("KAFKA_TRUSTED_CERT", "ssl_cafile"), ("KAFKA_CLIENT_CERT", "ssl_certfile"),
                         ("KAFKA_CLIENT_CERT_KEY", "ssl_keyfile")):
            if env.get(var):
                path = pem_dir / f"{opt}.pem"
                path.write_text(env[var])
                path.chmod(0o600)
                kafka[opt] = str(path)


def apply_env(raw: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """Environment overrides on top of the file's dict (before validation, so they are validated too)."""
    raw = dict(raw)
    kafka = dict(raw.get("kafka") or {})
    if env.get("KAFKA_BOOTSTRAP_SERVERS"):
        kafka["bootstrap_servers"] = [s.strip() for s in env["KAFKA_BOOTSTRAP_SERVERS"].split(",") if s.strip()]
    elif env.get("KAFKA_URL"):
        _heroku_kafka(env, kafka)
    if env.get("GATEWAY_KAFKA_CLIENT"):
        kafka["client"] = env["GATEWAY_KAFKA_CLIENT"]
    if kafka:
        raw["kafka"] = kafka
    if env.get("GATEWAY_REPLY_PARTITIONS"):
        reply = dict(raw.get("reply") or {})
        try:
            reply["partitions"] = int(env["GATEWAY_REPLY_PARTITIONS"])
        except ValueError:
            raise ConfigError(
                f"GATEWAY_REPLY_PARTITIONS={env['GATEWAY_REPLY_PARTITIONS']!r} is not a whole number") from None
        raw["reply"] = reply
    return raw


def parse_config(raw: Mapping[str, Any], source: str = "configuration") -> Config:
    try:
        return GatewaySchema().load(dict(raw))
    except ValidationError as exc:
        lines = "\n  ".join(_flatten_errors(exc.messages))
        raise ConfigError(f"invalid {source}:\n  {lines}") from None


def config_path(env: Mapping[str, str] | None = None) -> Path:
    """The config file: ``GATEWAY_CONFIG``, else the source tree's ``conf/gateway.toml``, else the packaged
    defaults (a wheel install, run outside any source tree)."""
    env = os.environ if env is None else env
    if env.get("GATEWAY_CONFIG"):
        return Path(env["GATEWAY_CONFIG"])
    return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.exists() else PACKAGED_CONFIG


def load_config(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Read the TOML file, apply environment overrides, validate. Raises :class:`ConfigError`."""
    env = os.environ if env is None else env
    path = Path(path) if path else config_path(env)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found; set GATEWAY_CONFIG to the path of your gateway.toml") \
            from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    return parse_config(apply_env(raw, env), str(path))


