"""The shipped gunicorn config (conf/gunicorn.conf.py) plus an event recorder in each worker (bench/timeline.py).

Only for ``python -m bench.timeline``: ``BENCH_TIMELINE_DIR`` says where the control files and the timelines go.
"""
import os
import runpy
from pathlib import Path

_base = runpy.run_path(str(Path(__file__).resolve().parent.parent / "conf" / "gunicorn.conf.py"))
globals().update({k: v for k, v in _base.items() if not k.startswith("_")})


def post_worker_init(worker):
    _base["post_worker_init"](worker)  # the gateway is up and ready; record from here on
    from bench.timeline import Recorder

    Recorder(Path(os.environ["BENCH_TIMELINE_DIR"])).install(worker)
