"""Topics: creation (``gateway topics``, each worker's start-up, recovery after a broker came back empty), with the
configured durability, and the topic ids that tell a re-created topic from the one a reader positioned in.

**Why topic ids.** A reader's positions are only meaningful in the log they were taken in. When a topic is deleted
and created again (by an operator, or by the gateway after a broker came back empty) the new log starts at 0, and
positions from the old one point at records that were never read (or past the end). Kafka (≥ 2.8, KIP-516) gives
every topic a UUID at creation and never reuses it: the same name with a different id IS a new log, and the same
id is the same log, whatever the offsets look like. Offsets alone cannot tell (a position past a partition's end
looks like a recreated log, but some brokers report a short end after multi-record batches: that guess replayed
hundreds of requests, issue 7). Brokers without topic ids report none (or the all-zero id): then nothing is
rewound on a guess, and Kafka's own OffsetOutOfRange (positions past the end -> ``auto_offset_reset``) is what
recovers a reader.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError

from gateway_sdk.clients import ZERO_ID, topic_id  # shared with the SDK's responder (re-exported here)

if TYPE_CHECKING:
    from ..config import Config

__all__ = ["ZERO_ID", "describe_ids", "durability", "ensure_topics", "topic_id", "variant_topic_configs",
           "variant_topics", "wanted_topics"]
log = logging.getLogger(__name__)


def wanted_topics(config: Config, include_services: bool = True) -> dict[str, int]:
    topics = {config.reply.topic: config.reply.partitions}
    if include_services:
        for svc in config.services.values():
            topics[svc.topic] = svc.partitions
    topics.update(variant_topics(config))
    return topics


def variant_topics(config: Config) -> dict[str, int]:
    """The async results topic and the answer-on events topics (docs/variants.md)."""
    topics = {config.async_requests.results_topic: config.async_requests.partitions}
    for svc in config.services.values():
        if svc.answer_on is not None:
            topics.setdefault(svc.answer_on.topic, svc.answer_on.partitions)
    return topics


def variant_topic_configs(config: Config) -> dict[str, dict[str, str]]:
    return {config.async_requests.results_topic: {"retention.ms": str(config.async_requests.retention_ms)}}


def durability(config: Config, brokers: int) -> tuple[int, int]:
    """(replication factor, min.insync.replicas) for topics the gateway creates: the configured values, else
    min(3, brokers) and 2 when that is at least 3, else 1 (see ``kafka.replication_factor``)."""
    k = config.kafka
    rf = k.replication_factor or min(3, max(1, brokers))
    isr = k.min_insync_replicas or (2 if rf >= 3 else 1)
    return rf, min(isr, rf)


def ensure_topics(config: Config, topics: dict[str, int], timeout_ms: int = 10000,
                  topic_configs: dict[str, dict[str, str]] | None = None,
                  ids: dict[str, str | None] | None = None) -> dict[str, int]:
    """Create the missing topics; return every topic's actual partition count. Existing topics are left alone.

    *topic_configs* (topic -> {config: value}) applies to topics created here, e.g. ``retention.ms``; every topic
    created here gets the replication factor and ``min.insync.replicas`` of :func:`durability`. If *ids* is given,
    it is filled with each topic's id (None where the broker has none)."""
    if topic_configs is None:
        topic_configs = variant_topic_configs(config)
    admin = KafkaAdminClient(**{**config.kafka_client_kwargs(), "request_timeout_ms": timeout_ms})
    try:
        existing = set(admin.list_topics())
        missing = [name for name in topics if name not in existing]
        if missing:
            brokers = len(admin.describe_cluster().get("brokers") or [])
            rf, isr = durability(config, brokers)
            for name in missing:
                try:
                    admin.create_topics([NewTopic(name, topics[name], rf, topic_configs={
                        "min.insync.replicas": str(isr), **topic_configs.get(name, {})})], timeout_ms=timeout_ms)
                    log.info("created topic %s with %d partitions, replication factor %d, min.insync.replicas %d",
                             name, topics[name], rf, isr)
                except TopicAlreadyExistsError:
                    pass  # another worker or instance won the race
        actual: dict[str, int] = {}
        for desc in admin.describe_topics(list(topics)):
            name = desc.get("name") or desc.get("topic")
            actual[name] = len(desc["partitions"])
            if ids is not None:
                ids[name] = topic_id(desc)
        return actual
    finally:
        admin.close()


def describe_ids(client_kwargs: dict[str, Any], topics: list[str], timeout_ms: int = 5000) -> dict[str, str | None]:
    """Each topic's id now (None: the broker has none, or the topic does not exist)."""
    admin = KafkaAdminClient(**{**client_kwargs, "request_timeout_ms": timeout_ms})
    try:
        return {(d.get("name") or d.get("topic")): topic_id(d) for d in admin.describe_topics(topics)
                if not d.get("error_code")}
    finally:
        admin.close()
