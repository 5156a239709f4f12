"""``python bench/fetchcost.py x 1:100,16:100,16:5`` (partitions:poll_ms per run): CPU per fetch of an idle-but-fetching gevent consumer (the reply reader's shape) by partitions read; fresh broker."""
import sys, time, os, subprocess, json
mode = sys.argv[1]
if mode == "child":
    from gevent import monkey; monkey.patch_all()
    from kafka import KafkaConsumer, TopicPartition
    bootstrap, n, secs, POLL = sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, fetch_max_wait_ms=10,
                      fetch_min_bytes=1, metrics_enabled=False)
    c.assign([TopicPartition("t", p) for p in range(n)]); c.seek_to_end()
    for p in range(n): c.position(TopicPartition("t", p))
    count = [0]
    orig = c._fetcher._handle_fetch_response
    def wrapped(*a, **k):
        count[0] += 1
        return orig(*a, **k)
    c._fetcher._handle_fetch_response = wrapped
    t_end = time.monotonic() + 2
    while time.monotonic() < t_end: c.poll(timeout_ms=POLL)
    count[0] = 0; cpu0 = time.process_time(); w0 = time.monotonic()
    t_end = w0 + secs
    while time.monotonic() < t_end: c.poll(timeout_ms=POLL)
    cpu = time.process_time() - cpu0
    print(json.dumps({"n": n, "fetches": count[0], "cpu_ms": cpu * 1000, "wall": time.monotonic() - w0}), flush=True)
    sys.exit(0)
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent))
from gateway.broker import EmbeddedBroker
from kafka.admin import KafkaAdminClient, NewTopic
def cpu_of(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
for spec in sys.argv[2].split(","):
    n, poll = map(int, spec.split(":"))
    with EmbeddedBroker() as b:
        a = KafkaAdminClient(bootstrap_servers=b.bootstrap); a.create_topics([NewTopic("t", 16, 1)]); a.close()
        bp = b._proc.pid
        b0 = cpu_of(bp)
        out = subprocess.run([sys.executable, __file__, "child", b.bootstrap, str(n), "8", str(poll)], capture_output=True, text=True)
        b1 = cpu_of(bp)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"poll {poll:3} partitions {n:2}: {r['fetches']} fetches in {r['wall']:.1f}s, consumer {r['cpu_ms']/max(1,r['fetches']):.3f} ms CPU/fetch, "
              f"broker ~{(b1-b0)*1000/max(1,r['fetches']):.3f} ms CPU/fetch (incl. 2 s warm-up)", flush=True)
