"""Answer on state: every worker tails the configured events topics (group-less, from their end, positioned
before the worker serves) into an :class:`EntityTable`: entity id -> its latest event. Requests wait on the table.

Two uses (docs/variants.md, variant 4):

* ``answer_on``: after the service's correlated reply (say ``201 CREATED``), wait until the entity's state is one
  of ``states`` (``VALIDATED``/``FAILED``) and answer with that event.
* conditional GET: ``If-None-Match: <etag>`` + ``Prefer: wait=<s>`` waits for the entity's next change.

Many waiters may wait on one entity; the table is bounded (``state.max_entities``, least recently changed go).
"""
from __future__ import annotations

import collections
import json
import logging
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from gevent.event import Event

from .. import jsonutil
from ..errors import StateTimeout

if TYPE_CHECKING:
    from ..config import AnswerOn
    from ..core.runtime import Gateway

log = logging.getLogger(__name__)
READ_BARRIER_S = 1.0     # longest a conditional GET waits to catch up with the events topic (wait_for_change)
_ETAG_CHARS = re.compile(r"[\x21\x23-\x7e\x80-\xff]{1,256}")


@dataclass(frozen=True)
class EntityEvent:
    """The latest event the worker read for one entity."""

    entity_id: str
    value: dict[str, Any]
    raw: bytes
    partition: int
    offset: int
    seen_at: float          # time.monotonic() when this worker read it

    def state(self, state_field: str) -> Any:
        return self.value.get(state_field)

    def etag(self, version_field: str | None) -> str:
        version = self.value.get(version_field) if version_field else None
        if version is not None:
            text = version if isinstance(version, str) else json.dumps(version)
            if _ETAG_CHARS.fullmatch(text):         # anything else could not be an ETag header (RFC 9110 etagc)
                return f'"{text}"'
        return f'"e{self.partition}.{self.offset}"'


class _Waiter:
    __slots__ = ("predicate", "event", "hit")

    def __init__(self, predicate: Callable[[EntityEvent], bool]) -> None:
        self.predicate = predicate
        self.event = Event()
        self.hit: EntityEvent | None = None


class EntityTable:
    """entity id -> latest :class:`EntityEvent`, with waiters; fed by one events-topic tail."""

    def __init__(self, max_entities: int) -> None:
        self.max_entities = max_entities
        self._latest: collections.OrderedDict[str, EntityEvent] = collections.OrderedDict()
        self._waiters: dict[str, list[_Waiter]] = {}

    def __len__(self) -> int:
        return len(self._latest)

    def waiting(self) -> int:
        return sum(len(w) for w in self._waiters.values())

    def get(self, entity_id: str) -> EntityEvent | None:
        return self._latest.get(entity_id)

    def update(self, event: EntityEvent) -> bool:
        """Record *event* unless it is older than what we have (a re-read); wake matching waiters."""
        prior = self._latest.get(event.entity_id)
        if prior is not None and prior.partition == event.partition and event.offset <= prior.offset:
            return False
        self._latest[event.entity_id] = event
        self._latest.move_to_end(event.entity_id)
        while len(self._latest) > self.max_entities:
            self._latest.popitem(last=False)
        for w in self._waiters.get(event.entity_id, ()):
            if not w.event.is_set() and w.predicate(event):
                w.hit = event
                w.event.set()
        return True

    def wait(self, entity_id: str, predicate: Callable[[EntityEvent], bool], timeout_s: float) -> EntityEvent | None:
        """The first event (current or next) for which *predicate* holds, or None after *timeout_s*."""
        current = self._latest.get(entity_id)
        if current is not None and predicate(current):
            return current
        w = _Waiter(predicate)
        self._waiters.setdefault(entity_id, []).append(w)
        try:
            w.event.wait(max(0.0, timeout_s))
        finally:
            waiters = self._waiters.get(entity_id)
            if waiters is not None:
                waiters.remove(w)
                if not waiters:
                    del self._waiters[entity_id]
        return w.hit


def parse_event(record: Any, event_id_field: str | None) -> EntityEvent | None:
    """An events-topic record as an :class:`EntityEvent`; None when it is not a JSON object with an id."""
    try:
        value = jsonutil.parse(record.value or b"null")
    except ValueError:
        return None
    if not isinstance(value, dict):
        return None
    if event_id_field:
        entity = value.get(event_id_field)
        entity_id = None if entity is None else str(entity)
    else:
        entity_id = record.key.decode("utf-8", "replace") if record.key else None
    if not entity_id:
        return None
    return EntityEvent(entity_id, value, record.value, record.partition, record.offset, time.monotonic())


def entity_field(doc: Any, name: str) -> str | None:
    """The entity id in JSON field *name* of *doc*, as text; None when it is absent or empty."""
    if isinstance(doc, dict) and doc.get(name) not in (None, ""):
        value = doc[name]
        return value if isinstance(value, str) else json.dumps(value)
    return None


class StateWatcher:
    """Per worker: one tail + table per events topic named by some service's ``answer_on``."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.tables: dict[str, EntityTable] = {}
        self._id_fields: dict[str, str | None] = {}
        for svc in gw.config.services.values():
            if svc.answer_on is not None:
                topic = svc.answer_on.topic
                self.tables.setdefault(topic, EntityTable(gw.config.state.max_entities))
                self._id_fields[topic] = svc.answer_on.event_id_field
        self.tails: dict[str, Any] = {}

    def read_barrier(self, topic: str, timeout_s: float) -> bool:
        """Block until this worker has read *topic* up to its current end (see ``TopicTail.read_barrier``)."""
        tail = self.tails.get(topic)
        return tail is not None and tail.read_barrier(None, timeout_s)

    def wait_for_state(self, service: str, on: AnswerOn, entity_id: str, since: float,
                       correlation_id: str | None = None) -> EntityEvent:
        """The first event read after *since* (``time.monotonic()``) in which *entity_id* is in one of
        ``on.states``; :class:`StateTimeout` (504) after ``on.timeout_ms``."""
        states = set(on.states)
        table = self.tables[on.topic]
        event = table.wait(entity_id, lambda e: e.seen_at >= since and e.state(on.state_field) in states,
                           on.timeout_ms / 1000)
        if event is None:
            last = table.get(entity_id)
            seen = last.state(on.state_field) if last is not None else None
            raise StateTimeout(f"{service} entity {entity_id} did not reach {' or '.join(on.states)} within "
                               f"{on.timeout_ms} ms (last state seen: {seen})", correlation_id=correlation_id,
                               entity_id=entity_id, last_state=seen)
        return event

    def wait_for_change(self, on: AnswerOn, entity_id: str, etags: set[str], wait_s: float) -> EntityEvent | None:
        """The entity's current event if its ETag is not in *etags* (``*``: any event), else its next change
        within *wait_s*; None when nothing changed in time."""
        if "*" in etags:      # "any representation": wait for the first event the worker sees for it
            def changed(e: EntityEvent) -> bool:
                return True
        else:
            def changed(e: EntityEvent) -> bool:
                return e.etag(on.version_field) not in etags
        started = time.monotonic()
        # workers read the events topic independently: catch up first, so that a client holding the ETag another
        # worker just served is never answered with an older event (within the wait, not on top of it)
        self.read_barrier(on.topic, READ_BARRIER_S)
        wait_s = max(0.0, wait_s - (time.monotonic() - started))
        return self.tables[on.topic].wait(entity_id, changed, wait_s)

    def start(self) -> None:
        from ..kafka.tail import TopicTail

        for topic, table in self.tables.items():
            id_field = self._id_fields[topic]

            def on_record(record: Any, table: EntityTable = table, id_field: str | None = id_field) -> None:
                event = parse_event(record, id_field)
                if event is not None:
                    table.update(event)

            tail = TopicTail(self.gw.config, topic, on_record, start="end",
                             fetch_max_wait_ms=self.gw.config.state.fetch_max_wait_ms)
            tail.start()
            self.tails[topic] = tail

    @property
    def ready(self) -> bool:
        return all(t.ready for t in self.tails.values())

    def stop(self) -> None:
        for t in self.tails.values():
            t.stop()
