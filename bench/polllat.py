"""``python bench/polllat.py x 5,100``: Latency from produce to the gevent consumer's poll() returning the record, by poll timeout (W=10, fresh broker)."""
import sys, time, json, subprocess
if sys.argv[1] == "child":
    from gevent import monkey; monkey.patch_all()
    import gevent
    from gevent.event import Event
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition
    bootstrap, poll_ms, n = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, fetch_max_wait_ms=10,
                      metrics_enabled=False)
    tp = TopicPartition("t", 0); c.assign([tp]); c.seek_to_end(); c.position(tp)
    p = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, acks=1, enable_idempotence=False, metrics_enabled=False)
    got = {}
    def reader():
        while True:
            for recs in c.poll(timeout_ms=poll_ms).values():
                for r in recs:
                    ev = got.get(r.value)
                    if ev: ev.set()
    gevent.spawn(reader)
    lats = []
    for i in range(n):
        key = str(i).encode(); ev = got[key] = Event()
        t0 = time.perf_counter(); p.send("t", value=key, partition=0); ev.wait(5)
        lats.append((time.perf_counter() - t0) * 1000)
        gevent.sleep(0.005 + (i % 7) * 0.003)
    lats.sort()
    print(json.dumps({"p50": lats[len(lats)//2], "p90": lats[int(len(lats)*.9)], "cpu": time.process_time()}))
    sys.exit(0)
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent))
from gateway.broker import EmbeddedBroker
from kafka.admin import KafkaAdminClient, NewTopic
for poll in [int(x) for x in sys.argv[2].split(",")]:
    with EmbeddedBroker() as b:
        a = KafkaAdminClient(bootstrap_servers=b.bootstrap); a.create_topics([NewTopic("t", 1, 1)]); a.close()
        out = subprocess.run([sys.executable, __file__, "child", b.bootstrap, str(poll), "300"], capture_output=True, text=True)
        print(f"poll {poll:3}: {out.stdout.strip().splitlines()[-1] if out.stdout.strip() else out.stderr[-800:]}", flush=True)
