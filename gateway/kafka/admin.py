"""Topic creation: ``gateway topics`` and each worker's start-up (and recovery after a broker came back empty)."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError

if TYPE_CHECKING:
    from ..config import Config

log = logging.getLogger(__name__)


def wanted_topics(config: Config, include_services: bool = True) -> dict[str, int]:
    topics = {config.reply["topic"]: config.reply["partitions"]}
    if include_services:
        for svc in config.services.values():
            topics[svc.topic] = svc.partitions
    topics.update(variant_topics(config))
    return topics


def variant_topics(config: Config) -> dict[str, int]:
    """The async results topic and the answer-on events topics (docs/variants.md)."""
    topics = {config.async_["results_topic"]: config.async_["partitions"]}
    for svc in config.services.values():
        if svc.answer_on is not None:
            topics.setdefault(svc.answer_on["topic"], svc.answer_on["partitions"])
    return topics


def variant_topic_configs(config: Config) -> dict[str, dict[str, str]]:
    return {config.async_["results_topic"]: {"retention.ms": str(config.async_["retention_ms"])}}


def ensure_topics(config: Config, topics: dict[str, int], timeout_ms: int = 10000,
                  topic_configs: dict[str, dict[str, str]] | None = None) -> dict[str, int]:
    """Create the missing topics; return every topic's actual partition count. Existing topics are left alone.

    *topic_configs* (topic -> {config: value}) applies to topics created here, e.g. ``retention.ms``."""
    if topic_configs is None:
        topic_configs = variant_topic_configs(config)
    admin = KafkaAdminClient(**{**config.kafka_client_kwargs(), "request_timeout_ms": timeout_ms})
    try:
        existing = set(admin.list_topics())
        for name, n in topics.items():
            if name in existing:
                continue
            try:
                admin.create_topics([NewTopic(name, n, 1, topic_configs=topic_configs.get(name, {}))],
                                    timeout_ms=timeout_ms)
                log.info("created topic %s with %d partitions", name, n)
            except TopicAlreadyExistsError:
                pass  # another worker or instance won the race
        actual: dict[str, int] = {}
        for desc in admin.describe_topics(list(topics)):
            actual[desc.get("name") or desc.get("topic")] = len(desc["partitions"])
        return actual
    finally:
        admin.close()
