"""The configuration schema: one marshmallow schema per section, unknown keys rejected, units in names, the
relationships between settings checked with the values in the message. Each section loads into its typed, frozen
dataclass (:mod:`gateway.config.sections`).

Longer than ~300 lines on purpose: every setting's documentation lives next to its field (the README's table is
generated from it), so the length is the documentation of ~80 settings, not logic.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import re
from typing import Any, ClassVar

from marshmallow import RAISE, Schema, ValidationError, fields, post_load, validate, validates_schema

from . import sections

HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
RESERVED_NAMES = ("healthz", "readyz", "metrics", "ws", "requests", "static")
_TOPIC_RE = re.compile(r"^[a-zA-Z0-9._-]{1,249}$")
_SERVICE_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


class _Strict(Schema):
    section: ClassVar[type | None] = None     # the dataclass a loaded section becomes

    class Meta:
        unknown = RAISE

    @post_load
    def _typed(self, data: Any, **_: Any) -> Any:
        if self.section is None or not isinstance(data, dict):
            return data
        return self.section(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


class KafkaSchema(_Strict):
    """Kafka client settings shared by the producer and the reply consumer (kafka-python names)."""
    section = sections.KafkaSettings


    client = fields.String(
        load_default="kafka-python", validate=validate.OneOf(["kafka-python", "librdkafka"]),
        metadata={"doc": "The Kafka client of the hot path (the request producer and the reply reader): "
                         "kafka-python (pure Python) or librdkafka (confluent-kafka, `pip install "
                         "'kafka-rest-gateway[librdkafka]'`: its network I/O runs in C threads; measured on the "
                         "embedded broker: p50 at 1 client below the asyncio baseline's, less worker CPU per "
                         "request, but about twice the broker's CPU per request, README \"Benchmarks\"). Group "
                         "membership, admin and the variants' tails use kafka-python either way; the other settings "
                         "here apply to both."})
    bootstrap_servers = fields.List(fields.String(), load_default=["localhost:9092"],
                                    metadata={"doc": "Brokers to bootstrap from (host:port)."})
    client_id = fields.String(load_default="kafka-rest-gateway", metadata={"doc": "Client id sent to the broker."})
    security_protocol = fields.String(load_default="PLAINTEXT",
                                      validate=validate.OneOf(["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]),
                                      metadata={"doc": "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL."})
    sasl_mechanism = fields.String(load_default=None, allow_none=True,
                                   validate=validate.OneOf(["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]),
                                   metadata={"doc": "SASL mechanism when security_protocol is SASL_*."})
    sasl_plain_username = fields.String(load_default=None, allow_none=True, metadata={"doc": "SASL user name."})
    sasl_plain_password = fields.String(load_default=None, allow_none=True,
                                        metadata={"doc": "SASL password (never logged)."})
    ssl_cafile = fields.String(load_default=None, allow_none=True, metadata={"doc": "CA bundle (PEM file)."})
    ssl_certfile = fields.String(load_default=None, allow_none=True, metadata={"doc": "Client certificate (PEM)."})
    ssl_keyfile = fields.String(load_default=None, allow_none=True, metadata={"doc": "Client key (PEM)."})
    session_timeout_ms = fields.Integer(load_default=10000, validate=validate.Range(min=1000),
                                        metadata={"doc": "Reply-consumer group session timeout."})
    heartbeat_interval_ms = fields.Integer(load_default=3000, validate=validate.Range(min=100),
                                           metadata={"doc": "Group heartbeat interval; below session_timeout_ms/2."})
    fetch_max_wait_ms = fields.Integer(load_default=500, validate=validate.Range(min=1, max=5000),
                                       metadata={"doc": "Fetch long-poll wait of the reply reader (which fetches "
                                                        "only while requests wait for replies). 500 suits Apache "
                                                        "Kafka, which answers a fetch as soon as data arrives. The "
                                                        "embedded broker does not (it re-checks at half the wait): "
                                                        "10 there (conf/gateway.toml), or replies wait up to this "
                                                        "long."})
    request_timeout_ms = fields.Integer(load_default=5000, validate=validate.Range(min=100),
                                        metadata={"doc": "Kafka request timeout."})
    max_block_ms = fields.Integer(load_default=2000, validate=validate.Range(min=0),
                                  metadata={"doc": "How long a send may block on metadata or a full buffer before "
                                                   "the request fails with 503."})
    metadata_max_age_ms = fields.Integer(load_default=10000, validate=validate.Range(min=1000),
                                         metadata={"doc": "Metadata refresh period."})
    linger_ms = fields.Integer(load_default=0, validate=validate.Range(min=0, max=1000),
                               metadata={"doc": "Producer linger; 0 sends at once (lowest latency)."})
    acks = fields.Raw(load_default="all", validate=validate.OneOf([0, 1, -1, "all"]),
                      metadata={"doc": "Producer acks for request records: all (the record is on every in-sync "
                                       "replica before the request counts as sent), 1 or 0 (faster, lost with a "
                                       "broker)."})
    enable_idempotence = fields.Boolean(
        load_default=True,
        metadata={"doc": "Idempotent producer: a retried send is written once. Needs acks=all. Turn it off for "
                         "brokers that cannot recover an idempotent producer after a restart (the embedded broker "
                         "cannot; the gateway then re-creates its producer, and requests in that moment get 503)."})
    topic_check_interval_ms = fields.Integer(
        load_default=10000, validate=validate.Range(min=1000),
        metadata={"doc": "How often each worker re-reads its topics' ids (and re-creates missing topics): a topic "
                         "deleted and re-created, or a broker that came back empty between two probes, is a new log; "
                         "readers are repositioned once."})
    replication_factor = fields.Integer(
        load_default=None, allow_none=True, validate=validate.Range(min=1),
        metadata={"doc": "Replication factor of the topics the gateway creates (gateway topics, worker start, "
                         "recovery). Unset: the smaller of 3 and the number of brokers."})
    min_insync_replicas = fields.Integer(
        load_default=None, allow_none=True, validate=validate.Range(min=1),
        metadata={"doc": "min.insync.replicas of the topics the gateway creates. Unset: 2 when the replication "
                         "factor is at least 3 (a write survives the loss of one broker, and writes go on while one "
                         "is down), else 1."})
    compression_type = fields.String(load_default=None, allow_none=True,
                                     validate=validate.OneOf(["gzip", "snappy", "lz4", "zstd"]),
                                     metadata={"doc": "Producer compression (none by default)."})
    librdkafka = fields.Dict(
        keys=fields.String(), values=fields.Raw(), load_default=dict,
        metadata={"doc": "With client = \"librdkafka\": librdkafka properties passed as they are to the request "
                         "producer and the reply reader, after the gateway's own (which they override), e.g. "
                         "{ \"debug\" = \"fetch\" } or { \"fetch.queue.backoff.ms\" = 10 }. Names and values as "
                         "librdkafka's CONFIGURATION.md gives them; an unknown name stops the worker at start with "
                         "librdkafka's message. Secrets set here are not logged."})

    @validates_schema
    def _check(self, data: dict[str, Any], **_: Any) -> None:
        if data["client"] == "librdkafka" and importlib.util.find_spec("confluent_kafka") is None:
            raise ValidationError("client = \"librdkafka\" needs confluent-kafka, which is not installed: pip install "
                                  "'kafka-rest-gateway[librdkafka]' (or set client = \"kafka-python\")", "client")
        bad = [k for k, v in data["librdkafka"].items() if not isinstance(v, (str, int, float, bool))]
        if bad:
            raise ValidationError(f"librdkafka values must be strings, numbers or booleans (not for {bad})",
                                  "librdkafka")
        if data["heartbeat_interval_ms"] * 2 > data["session_timeout_ms"]:
            raise ValidationError(
                f"heartbeat_interval_ms ({data['heartbeat_interval_ms']}) must be at most half of session_timeout_ms "
                f"({data['session_timeout_ms']}); lower the heartbeat or raise the session timeout",
                "heartbeat_interval_ms")
        if data["enable_idempotence"] and data["acks"] not in (-1, "all"):
            raise ValidationError(f"enable_idempotence needs acks = \"all\" (acks is {data['acks']!r}); set acks to "
                                  "\"all\" or enable_idempotence to false", "enable_idempotence")
        rf, isr = data.get("replication_factor"), data.get("min_insync_replicas")
        if rf is not None and isr is not None and isr > rf:
            raise ValidationError(f"min_insync_replicas ({isr}) cannot exceed replication_factor ({rf}): no write "
                                  "could ever succeed with acks=all", "min_insync_replicas")
        if data["security_protocol"].startswith("SASL") and not data.get("sasl_mechanism"):
            raise ValidationError(f"security_protocol {data['security_protocol']} needs sasl_mechanism "
                                  "(PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)", "sasl_mechanism")
        for server in data["bootstrap_servers"]:
            if not re.match(r"^[^:\s/]+:\d{1,5}$", server):
                raise ValidationError(f"{server!r} is not host:port (e.g. localhost:9092)", "bootstrap_servers")


class ReplySchema(_Strict):
    """The shared reply topic and the gateway's consumer group on it."""
    section = sections.ReplySettings


    topic = fields.String(load_default="gateway.replies", validate=validate.Regexp(_TOPIC_RE),
                          metadata={"doc": "The one reply topic all gateway workers share."})
    partitions = fields.Integer(load_default=32, validate=validate.Range(min=1, max=1024),
                                metadata={"doc": "Reply partitions: at least the total number of gateway workers "
                                                 "of all instances, or some worker owns none and stays not-ready."})
    group_id = fields.String(load_default="kafka-rest-gateway", validate=validate.Length(min=1),
                             metadata={"doc": "Consumer group of the gateway workers on the reply topic."})
    poll_interval_ms = fields.Integer(load_default=100, validate=validate.Range(min=1, max=1000),
                                      metadata={"doc": "Longest a reply reader's poll blocks before it looks at "
                                                       "its assignment and the pending table again. kafka-python 3 "
                                                       "returns from a poll as soon as a fetch brings records, so "
                                                       "this adds no reply latency; shorter costs CPU while requests "
                                                       "wait (each poll is two hand-offs to kafka-python's IO "
                                                       "loop)."})
    mint_partitions = fields.Integer(
        load_default=2, validate=validate.Range(min=0),
        metadata={"doc": "Reply partitions each worker mints reply keys on (and so reads), of those it owns; 0: "
                         "all it owns. Fewer cost less CPU per fetch in the worker and the broker (every partition "
                         "of a fetch is encoded, answered and decoded). The embedded broker's fetches slow down with "
                         "the batches stored in a partition: 0 there (conf/gateway.toml) keeps it fast for longer."})
    startup_wait_ms = fields.Integer(load_default=20000, validate=validate.Range(min=0),
                                     metadata={"doc": "How long a starting worker waits to own a reply partition "
                                                      "before it starts serving anyway (and reports not-ready)."})
    leave_group_on_stop = fields.Boolean(load_default=True,
                                         metadata={"doc": "A stopping worker leaves the reply group (its partitions "
                                                          "move at once) instead of being expired after "
                                                          "kafka.session_timeout_ms. Set false on brokers that "
                                                          "mishandle LeaveGroup during a rebalance (the embedded "
                                                          "broker: the group never converged after a reload)."})


class LimitsSchema(_Strict):
    section = sections.LimitsSettings
    max_body_bytes = fields.Integer(load_default=1024 * 1024, validate=validate.Range(min=0),
                                    metadata={"doc": "Largest request body accepted (413 above)."})
    max_in_flight = fields.Integer(load_default=10000, validate=validate.Range(min=1),
                                   metadata={"doc": "Requests waiting for a reply per worker (503 + Retry-After "
                                                    "above)."})
    default_timeout_ms = fields.Integer(load_default=10000, validate=validate.Range(min=1),
                                        metadata={"doc": "Reply deadline for services that set none."})
    body_timeout_ms = fields.Integer(load_default=30000, validate=validate.Range(min=100),
                                     metadata={"doc": "Longest the gateway waits for a whole request body once it "
                                                      "starts reading it (right after the headers): a body that "
                                                      "trickles in gets 408 body_timeout and the connection is "
                                                      "closed. Request headers are bounded by gunicorn's keep-alive "
                                                      "timeout (75 s), on new connections too."})
    write_timeout_ms = fields.Integer(load_default=30000, validate=validate.Range(min=100),
                                      metadata={"doc": "Longest one write to a streaming (NDJSON/SSE) or websocket "
                                                       "client may block because the client does not read; then the "
                                                       "client is dropped as a slow consumer (its connection is "
                                                       "aborted, its requests released, "
                                                       "gateway_slow_consumers_dropped_total counts it)."})
    write_buffer_records = fields.Integer(load_default=10000, validate=validate.Range(min=1),
                                          metadata={"doc": "Reply records (stream items, websocket frames) a "
                                                           "streaming response or a websocket may have waiting "
                                                           "while a write to the client is blocked; one more and the "
                                                           "client is dropped as a slow consumer (a last error event "
                                                           "/ close code 1008). A burst (one fetch of a reply "
                                                           "partition) may pass it while the client reads."})
    write_buffer_bytes = fields.Integer(load_default=8 * 1024 * 1024, validate=validate.Range(min=1024),
                                        metadata={"doc": "The same bound in bytes (one record is always accepted, "
                                                         "however large)."})


class KeySchema(_Strict):
    """Where the request record's Kafka key comes from (so one entity's requests stay in order)."""
    section = sections.KeySpec


    source = fields.String(required=True, validate=validate.OneOf(["path", "json", "header"]),
                           metadata={"doc": "path segment, top-level JSON field, or request header."})
    segment = fields.Integer(load_default=None, allow_none=True, validate=validate.Range(min=0),
                             metadata={"doc": "source=path: index into the path's segments (/orders/42: 0=orders, "
                                              "1=42)."})
    field = fields.String(load_default=None, allow_none=True, metadata={"doc": "source=json: field name."})
    header = fields.String(load_default=None, allow_none=True, metadata={"doc": "source=header: header name."})

    @validates_schema
    def _check(self, data: dict[str, Any], **_: Any) -> None:
        needed = {"path": "segment", "json": "field", "header": "header"}[data["source"]]
        if data.get(needed) is None:
            raise ValidationError(f"key source {data['source']!r} needs {needed!r}", needed)


class AnswerOnSchema(_Strict):
    """Answer on state: reply when the entity's events reach one of ``states`` (docs/variants.md, variant 4)."""
    section = sections.AnswerOn


    topic = fields.String(required=True, validate=validate.Regexp(_TOPIC_RE),
                          metadata={"doc": "Events topic every worker tails (from its end) for this entity."})
    partitions = fields.Integer(load_default=4, validate=validate.Range(min=1, max=1024),
                                metadata={"doc": "Partitions `gateway topics` creates the events topic with."})
    methods = fields.List(fields.String(validate=validate.OneOf(HTTP_METHODS)), load_default=["POST"],
                          validate=validate.Length(min=1),
                          metadata={"doc": "Methods answered on state; others are plain request-reply."})
    id_source = fields.String(load_default="reply", validate=validate.OneOf(["reply", "body", "path"]),
                              metadata={"doc": "Where the entity id comes from: the service's reply (JSON "
                                               "field), the request body (JSON field) or a path segment."})
    id_field = fields.String(load_default="id", metadata={"doc": "id_source reply/body: the JSON field."})
    id_segment = fields.Integer(load_default=1, validate=validate.Range(min=0),
                                metadata={"doc": "Path segment of the entity id (/orders/o-1: 1), for "
                                                 "id_source=path and for conditional GET waits."})
    event_id_field = fields.String(load_default=None, allow_none=True,
                                   metadata={"doc": "JSON field of an event holding the entity id; unset: the "
                                                    "event record's key."})
    state_field = fields.String(load_default="state", metadata={"doc": "JSON field of an event holding the state."})
    states = fields.List(fields.String(), required=True, validate=validate.Length(min=1),
                         metadata={"doc": "Answer once the entity's state is one of these."})
    version_field = fields.String(load_default=None, allow_none=True,
                                  metadata={"doc": "JSON field of an event used as the ETag; unset: the event's "
                                                   "partition and offset."})
    timeout_ms = fields.Integer(load_default=None, allow_none=True, validate=validate.Range(min=1),
                                metadata={"doc": "How long to wait for the state after the reply (default: the "
                                                 "service's timeout_ms)."})


class ServiceSchema(_Strict):
    topic = fields.String(required=True, validate=validate.Regexp(_TOPIC_RE),
                          metadata={"doc": "The service's request topic."})
    partitions = fields.Integer(load_default=4, validate=validate.Range(min=1, max=1024),
                                metadata={"doc": "Partitions `gateway topics` creates the request topic with."})
    timeout_ms = fields.Integer(load_default=None, allow_none=True, validate=validate.Range(min=1),
                                metadata={"doc": "Reply deadline (default limits.default_timeout_ms)."})
    methods = fields.List(fields.String(validate=validate.OneOf(HTTP_METHODS)),
                          load_default=["GET", "POST", "PUT", "PATCH", "DELETE"], validate=validate.Length(min=1),
                          metadata={"doc": "HTTP methods the service accepts (405 otherwise)."})
    content_types = fields.List(fields.String(), load_default=["application/json"],
                                metadata={"doc": "Request content types accepted for bodies (415 otherwise); "
                                                 "'*/*' accepts any."})
    key = fields.Nested(KeySchema, load_default=None, allow_none=True,
                        metadata={"doc": "Optional request record key."})
    reply_content_type = fields.String(load_default="application/json",
                                       metadata={"doc": "Content type of replies that carry none."})
    async_timeout_ms = fields.Integer(load_default=None, allow_none=True, validate=validate.Range(min=1),
                                      metadata={"doc": "Deadline of an async request (Prefer: respond-async); "
                                                       "after it the result is a 504 (default: timeout_ms)."})
    stream_idle_timeout_ms = fields.Integer(load_default=10000, validate=validate.Range(min=1),
                                            metadata={"doc": "Streaming replies: the longest gap between two "
                                                             "records before the stream ends with an error."})
    stream_timeout_ms = fields.Integer(load_default=300000, validate=validate.Range(min=1),
                                       metadata={"doc": "Streaming replies: the whole stream's deadline."})
    answer_on = fields.Nested(AnswerOnSchema, load_default=None, allow_none=True,
                              metadata={"doc": "Answer when the entity's events reach a state (see "
                                               "services.<name>.answer_on)."})

    @validates_schema
    def _check(self, data: dict[str, Any], **_: Any) -> None:
        key = data.get("key")
        if key and key.source == "json":
            if "application/json" not in data["content_types"] and "*/*" not in data["content_types"]:
                raise ValidationError("key from a JSON field needs 'application/json' in content_types", "key")
            if not set(data["methods"]) & {"POST", "PUT", "PATCH"}:
                raise ValidationError("key from a JSON field needs a method with a body (POST, PUT or PATCH)", "key")


class HttpSchema(_Strict):
    section = sections.HttpSettings
    forward_request_headers = fields.List(
        fields.String(), load_default=["accept", "accept-language", "user-agent", "x-request-id", "idempotency-key",
                                       "if-match", "if-none-match"],
        metadata={"doc": "Request headers copied onto the request record (lower case). traceparent/tracestate "
                         "always are. Authorization is not, unless listed."})
    forward_response_headers = fields.List(
        fields.String(), load_default=["location", "etag", "cache-control", "last-modified", "retry-after",
                                       "x-request-id", "content-language"],
        metadata={"doc": "Reply headers copied onto the HTTP response."})
    lean_path = fields.Boolean(
        load_default=True,
        metadata={"doc": "Serve plain requests to a service without Flask's per-request machinery (same checks, "
                         "edge hook, responses and metrics; less CPU). Off: every request goes through Flask."})


class AsyncSchema(_Strict):
    """Async request + poll (``Prefer: respond-async``): results live on a topic every worker reads in full."""
    section = sections.AsyncSettings


    results_topic = fields.String(load_default="gateway.results", validate=validate.Regexp(_TOPIC_RE),
                                  metadata={"doc": "Topic services reply to for async requests; every worker "
                                                   "reads it all, so any worker answers any poll."})
    partitions = fields.Integer(load_default=8, validate=validate.Range(min=1, max=1024),
                                metadata={"doc": "Partitions of the results topic (created if missing)."})
    retention_ms = fields.Integer(load_default=3600000, validate=validate.Range(min=1000),
                                  metadata={"doc": "How long results stay retrievable (also the topic's "
                                                   "retention.ms when the gateway creates it)."})
    max_results = fields.Integer(load_default=100000, validate=validate.Range(min=1),
                                 metadata={"doc": "Results each worker keeps in memory; the oldest go first."})
    max_wait_ms = fields.Integer(load_default=30000, validate=validate.Range(min=0),
                                 metadata={"doc": "Cap on a poll's Prefer: wait=<seconds>."})
    unknown_id_wait_ms = fields.Integer(load_default=1000, validate=validate.Range(min=0),
                                        metadata={"doc": "Bound on a poll's read barrier: before answering 202, "
                                                         "404 or 504 a worker reads the id's results partition up "
                                                         "to its end, so no worker answers older news than another "
                                                         "already did. Past the bound it answers from what it has."})
    fetch_max_wait_ms = fields.Integer(load_default=500, validate=validate.Range(min=1, max=5000),
                                       metadata={"doc": "Fetch long-poll wait of the results tail. Kafka answers "
                                                        "as soon as data arrives (500 costs nothing there); brokers "
                                                        "that do not (the embedded one) add up to half of it to a "
                                                        "result's visibility. Lower costs idle CPU in every "
                                                        "worker."})
    max_result_bytes = fields.Integer(load_default=1024 * 1024, validate=validate.Range(min=1024),
                                      metadata={"doc": "Largest result kept (a reply body, or a streamed reply's "
                                                       "items gathered into one NDJSON body); a larger one is "
                                                       "answered as 502 result_too_large."})
    max_store_bytes = fields.Integer(load_default=128 * 1024 * 1024, validate=validate.Range(min=1024),
                                     metadata={"doc": "Bytes of results each worker keeps in memory (every worker "
                                                      "keeps a copy of every result); the oldest go first, then "
                                                      "polls for them answer 404."})
    max_stream_records = fields.Integer(load_default=10000, validate=validate.Range(min=1),
                                        metadata={"doc": "Records of a streamed reply gathered into one async "
                                                         "result; more make it 502 result_too_large."})

    @validates_schema
    def _check(self, data: dict[str, Any], **_: Any) -> None:
        if data["max_result_bytes"] > data["max_store_bytes"]:
            raise ValidationError(f"max_result_bytes ({data['max_result_bytes']}) must not exceed max_store_bytes "
                                  f"({data['max_store_bytes']}): such a result could never be kept",
                                  "max_result_bytes")


class WebsocketSchema(_Strict):
    """The ``/ws`` endpoint."""
    section = sections.WebsocketSettings


    max_frame_bytes = fields.Integer(load_default=1024 * 1024, validate=validate.Range(min=64),
                                     metadata={"doc": "Largest request frame; larger ones get an error frame."})
    max_in_flight = fields.Integer(load_default=100, validate=validate.Range(min=1),
                                   metadata={"doc": "Requests in flight per socket; more get an error frame."})
    ping_interval_ms = fields.Integer(load_default=25000, validate=validate.Range(min=0),
                                      metadata={"doc": "Ping every socket this often; a client that has not "
                                                       "answered the previous ping by then is closed (1008 "
                                                       "\"Ping/Pong timeout\") and its requests released. 0: no "
                                                       "pings."})


class StateSchema(_Strict):
    """Answer on state: the per-worker table of entity states read from the events topics."""
    section = sections.StateSettings


    max_entities = fields.Integer(load_default=100000, validate=validate.Range(min=1),
                                  metadata={"doc": "Entities whose latest event each worker remembers."})
    max_wait_ms = fields.Integer(load_default=60000, validate=validate.Range(min=0),
                                 metadata={"doc": "Cap on Prefer: wait=<seconds> of a conditional GET."})
    fetch_max_wait_ms = fields.Integer(load_default=500, validate=validate.Range(min=1, max=5000),
                                       metadata={"doc": "Fetch long-poll wait of the events tails (see "
                                                        "async.fetch_max_wait_ms; 250 in conf/gateway.toml)."})


class GatewaySchema(_Strict):
    kafka = fields.Nested(KafkaSchema, load_default=lambda: KafkaSchema().load({}))
    reply = fields.Nested(ReplySchema, load_default=lambda: ReplySchema().load({}))
    limits = fields.Nested(LimitsSchema, load_default=lambda: LimitsSchema().load({}))
    http = fields.Nested(HttpSchema, load_default=lambda: HttpSchema().load({}))
    async_requests = fields.Nested(AsyncSchema, data_key="async", load_default=lambda: AsyncSchema().load({}))
    websocket = fields.Nested(WebsocketSchema, load_default=lambda: WebsocketSchema().load({}))
    state = fields.Nested(StateSchema, load_default=lambda: StateSchema().load({}))
    services = fields.Dict(keys=fields.String(), values=fields.Nested(ServiceSchema), required=True)

    @validates_schema
    def _check(self, data: dict[str, Any], **_: Any) -> None:
        if not data["services"]:
            raise ValidationError("define at least one service under [services.<name>]", "services")
        topics: dict[str, str] = {}
        for name, svc in data["services"].items():
            if not _SERVICE_RE.match(name) or name in RESERVED_NAMES:
                raise ValidationError(
                    f"service name {name!r} must be lower-case letters, digits, '-' or '_' and not one of "
                    f"{', '.join(RESERVED_NAMES)}", "services")
            if svc["topic"] == data["reply"].topic:
                raise ValidationError(f"service {name!r} uses the reply topic {svc['topic']!r} as its request "
                                      "topic; give it its own topic", "services")
            if svc["topic"] in topics:
                raise ValidationError(f"services {topics[svc['topic']]!r} and {name!r} share request topic "
                                      f"{svc['topic']!r}; give each its own", "services")
            topics[svc["topic"]] = name
        _check_variants(data, topics)

    @post_load
    def _build(self, data: dict[str, Any], **_: Any) -> sections.Config:
        services = {}
        for name, s in data["services"].items():
            s = dict(s)
            s["timeout_ms"] = s["timeout_ms"] or data["limits"].default_timeout_ms
            s["methods"] = tuple(m.upper() for m in s["methods"])
            s["content_types"] = tuple(s["content_types"])
            s["async_timeout_ms"] = s["async_timeout_ms"] or s["timeout_ms"]
            if s["answer_on"] is not None:
                s["answer_on"] = dataclasses.replace(s["answer_on"],
                                                     timeout_ms=s["answer_on"].timeout_ms or s["timeout_ms"])
            services[name] = sections.ServiceConfig(name=name, **s)
        http = data["http"]
        http = sections.HttpSettings(
            forward_request_headers=tuple(h.lower() for h in http.forward_request_headers),
            forward_response_headers=tuple(h.lower() for h in http.forward_response_headers),
            lean_path=http.lean_path)
        return sections.Config(kafka=data["kafka"], reply=data["reply"], limits=data["limits"], http=http,
                               services=services, async_requests=data["async_requests"], websocket=data["websocket"],
                               state=data["state"])


def _check_variants(data: dict[str, Any], service_topics: dict[str, str]) -> None:
    """The async results topic and the events topics must not collide with request or reply topics."""
    results = data["async_requests"].results_topic
    if results == data["reply"].topic or results in service_topics:
        raise ValidationError(f"async.results_topic {results!r} is also the reply topic or a request topic; "
                              "give it its own topic", "async")
    event_ids: dict[str, Any] = {}
    for name, svc in data["services"].items():
        on = svc.get("answer_on")
        if not on:
            continue
        topic = on.topic
        if topic in (data["reply"].topic, results) or topic in service_topics:
            raise ValidationError(f"services.{name}.answer_on.topic {topic!r} is a request, reply or results "
                                  "topic; name the topic the entity's events are published to", "services")
        if not set(on.methods) <= set(svc["methods"]):
            raise ValidationError(f"services.{name}.answer_on.methods {list(on.methods)} must be among the "
                                  f"service's methods {svc['methods']}", "services")
        if on.id_source == "body" and not set(on.methods) <= {"POST", "PUT", "PATCH"}:
            raise ValidationError(f"services.{name}.answer_on: id_source 'body' needs methods with a body "
                                  "(POST, PUT, PATCH)", "services")
        if event_ids.setdefault(topic, on.event_id_field) != on.event_id_field:
            raise ValidationError(f"services sharing events topic {topic!r} must agree on event_id_field",
                                  "services")


