"""The peer to beat: a hand-written asyncio gateway for ``/echo/<path>``, aiohttp + aiokafka, one process.

What someone would write instead of running this project: Spring-style request headers (``kafka_correlationId``
raw bytes, ``kafka_replyTopic``, ``kafka_replyPartition`` 4-byte big-endian), a dict of futures keyed by
correlation id, one reply reader on the partitions of its own reply topic (round-robin over them), the gateway's
producer settings and fetch wait. Run: ``python -m bench.baseline BOOTSTRAP REQUEST_TOPIC REPLY_TOPIC PARTITIONS
--port P``.
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import struct

from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition


def header(record: ConsumerRecord, name: str) -> bytes | None:
    return next((v for k, v in record.headers if k == name), None)


class Baseline:
    def __init__(self, args: argparse.Namespace) -> None:
        self.a = args
        self.pending: dict[bytes, asyncio.Future[ConsumerRecord]] = {}
        self.partitions = itertools.cycle([struct.pack(">i", p) for p in range(args.partitions)])
        self.reply_topic = args.reply_topic.encode()

    async def start(self, _: web.Application) -> None:
        kafka = {"bootstrap_servers": self.a.bootstrap, "request_timeout_ms": 5000}
        # the gateway's delivery settings (its defaults: acks=all, idempotent), passed by the bench from its config
        acks = self.a.acks if self.a.acks == "all" else int(self.a.acks)
        self.producer = AIOKafkaProducer(**kafka, acks=acks, linger_ms=self.a.linger_ms,
                                         enable_idempotence=self.a.idempotence)
        self.consumer = AIOKafkaConsumer(**kafka, group_id=None, enable_auto_commit=False,
                                         fetch_max_wait_ms=self.a.fetch_max_wait_ms, max_poll_records=2000)
        await self.producer.start()
        await self.consumer.start()
        tps = [TopicPartition(self.a.reply_topic, p) for p in range(self.a.partitions)]
        self.consumer.assign(tps)
        await self.consumer.seek_to_end(*tps)
        for tp in tps:
            await self.consumer.position(tp)  # positioned before the first request can be answered
        self.reader = asyncio.create_task(self.read())

    async def stop(self, _: web.Application) -> None:
        self.reader.cancel()
        await asyncio.gather(self.consumer.stop(), self.producer.stop())

    async def read(self) -> None:
        while True:
            for records in (await self.consumer.getmany(timeout_ms=1000)).values():
                for record in records:
                    future = self.pending.pop(header(record, "kafka_correlationId") or b"", None)
                    if future is not None and not future.done():
                        future.set_result(record)

    async def handle(self, request: web.Request) -> web.Response:
        correlation_id = os.urandom(16)
        future = asyncio.get_running_loop().create_future()
        self.pending[correlation_id] = future
        headers = [("kafka_correlationId", correlation_id), ("kafka_replyTopic", self.reply_topic),
                   ("kafka_replyPartition", next(self.partitions))]
        try:
            delivery = await self.producer.send(self.a.request_topic, await request.read(), headers=headers)
            delivery.add_done_callback(lambda d: d.cancelled() or d.exception() is None or future.done()
                                       or future.set_exception(d.exception()))  # type: ignore[arg-type]
            record = await asyncio.wait_for(future, self.a.timeout_s)
        except asyncio.TimeoutError:
            return web.Response(status=504, text="no reply in time")
        except Exception as exc:  # noqa: BLE001 - the broker did not take the request
            return web.Response(status=503, text=f"not delivered: {type(exc).__name__}")
        finally:
            self.pending.pop(correlation_id, None)
        status = header(record, "gateway-status")
        content_type = header(record, "content-type")
        return web.Response(body=record.value, status=int(status) if status else 200,
                            headers={"Content-Type": content_type.decode()} if content_type else None)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline", description=__doc__.split("\n")[0])
    for name in ("bootstrap", "request_topic", "reply_topic"):
        parser.add_argument(name)
    parser.add_argument("partitions", type=int)
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--fetch-max-wait-ms", type=int, default=10, help="the gateway's default (10)")
    parser.add_argument("--timeout-s", type=float, default=5.0)
    parser.add_argument("--acks", default="all", help="producer acks, the gateway's kafka.acks (all)")
    parser.add_argument("--linger-ms", type=int, default=0, help="producer linger, the gateway's kafka.linger_ms")
    parser.add_argument("--idempotence", action=argparse.BooleanOptionalAction, default=True,
                        help="idempotent producer, the gateway's kafka.enable_idempotence (on)")
    args = parser.parse_args()
    app = web.Application()
    baseline = Baseline(args)
    app.on_startup.append(baseline.start)
    app.on_cleanup.append(baseline.stop)
    app.router.add_route("*", "/echo/{tail:.*}", baseline.handle)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
