"""The configuration as the code reads it: typed, frozen sections (``config.reply.topic``), built by the schema's
``post_load`` (:mod:`gateway.config.schema`) from validated input, so a value here is always a valid one.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class KafkaSettings:
    """``[kafka]``: client settings shared by the producer and the consumers (kafka-python names)."""

    client: str
    bootstrap_servers: tuple[str, ...]
    client_id: str
    security_protocol: str
    sasl_mechanism: str | None
    sasl_plain_username: str | None
    sasl_plain_password: str | None
    ssl_cafile: str | None
    ssl_certfile: str | None
    ssl_keyfile: str | None
    session_timeout_ms: int
    heartbeat_interval_ms: int
    fetch_max_wait_ms: int
    request_timeout_ms: int
    max_block_ms: int
    metadata_max_age_ms: int
    linger_ms: int
    acks: int | str
    enable_idempotence: bool
    topic_check_interval_ms: int
    replication_factor: int | None
    min_insync_replicas: int | None
    compression_type: str | None
    librdkafka: dict[str, str | int | float | bool]


@dataclass(frozen=True)
class ReplySettings:
    """``[reply]``: the shared reply topic and the gateway's consumer group on it."""

    topic: str
    partitions: int
    group_id: str
    poll_interval_ms: int
    mint_partitions: int
    startup_wait_ms: int
    leave_group_on_stop: bool


@dataclass(frozen=True)
class LimitsSettings:
    """``[limits]``: what one worker and one client may hold."""

    max_body_bytes: int
    max_in_flight: int
    default_timeout_ms: int
    body_timeout_ms: int
    write_timeout_ms: int
    write_buffer_records: int
    write_buffer_bytes: int


@dataclass(frozen=True)
class HttpSettings:
    """``[http]``: the headers that travel between HTTP and records (lower case); the lean path on or off."""

    forward_request_headers: tuple[str, ...]
    forward_response_headers: tuple[str, ...]
    lean_path: bool = True


@dataclass(frozen=True)
class AsyncSettings:
    """``[async]`` (``config.async_requests``: ``async`` is a keyword): async request + poll."""

    results_topic: str
    partitions: int
    retention_ms: int
    max_results: int
    max_wait_ms: int
    unknown_id_wait_ms: int
    fetch_max_wait_ms: int
    max_result_bytes: int
    max_store_bytes: int
    max_stream_records: int


@dataclass(frozen=True)
class WebsocketSettings:
    """``[websocket]``: the ``/ws`` endpoint."""

    max_frame_bytes: int
    max_in_flight: int
    ping_interval_ms: int


@dataclass(frozen=True)
class StateSettings:
    """``[state]``: the per-worker table of entity states."""

    max_entities: int
    max_wait_ms: int
    fetch_max_wait_ms: int


@dataclass(frozen=True)
class KeySpec:
    """``services.<name>.key``: where the request record's key comes from."""

    source: str
    segment: int | None
    field: str | None
    header: str | None


@dataclass(frozen=True)
class AnswerOn:
    """``services.<name>.answer_on``: answer when the entity's events reach a state."""

    topic: str
    partitions: int
    methods: tuple[str, ...]
    id_source: str
    id_field: str
    id_segment: int
    event_id_field: str | None
    state_field: str
    states: tuple[str, ...]
    version_field: str | None
    timeout_ms: int | None


@dataclass(frozen=True)
class ServiceConfig:
    name: str
    topic: str
    partitions: int
    timeout_ms: int
    methods: tuple[str, ...]
    content_types: tuple[str, ...]
    key: KeySpec | None
    reply_content_type: str
    async_timeout_ms: int = 0          # 0 before _build fills in timeout_ms
    stream_idle_timeout_ms: int = 10000
    stream_timeout_ms: int = 300000
    answer_on: AnswerOn | None = None


@dataclass(frozen=True)
class Config:
    kafka: KafkaSettings
    reply: ReplySettings
    limits: LimitsSettings
    http: HttpSettings
    services: dict[str, ServiceConfig]
    async_requests: AsyncSettings = dataclasses.field(default_factory=lambda: _defaults("AsyncSchema"))
    websocket: WebsocketSettings = dataclasses.field(default_factory=lambda: _defaults("WebsocketSchema"))
    state: StateSettings = dataclasses.field(default_factory=lambda: _defaults("StateSchema"))

    def kafka_client_kwargs(self) -> dict[str, Any]:
        """Connection settings common to every kafka-python client."""
        k = self.kafka
        kwargs: dict[str, Any] = {"bootstrap_servers": list(k.bootstrap_servers), "client_id": k.client_id,
                                  "security_protocol": k.security_protocol, "request_timeout_ms": k.request_timeout_ms,
                                  "metadata_max_age_ms": k.metadata_max_age_ms}
        for opt in ("sasl_mechanism", "sasl_plain_username", "sasl_plain_password", "ssl_cafile", "ssl_certfile",
                    "ssl_keyfile"):
            if getattr(k, opt):
                kwargs[opt] = getattr(k, opt)
        return kwargs




def _defaults(schema: str) -> Any:
    from . import schema as schemas
    return getattr(schemas, schema)().load({})
