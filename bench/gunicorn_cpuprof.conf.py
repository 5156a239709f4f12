"""The shipped gunicorn config (conf/gunicorn.conf.py) plus a CPU-time sampler in each worker (bench/cpuprof.py).

Only for ``python -m bench.profile``: ``BENCH_CPUPROF_DIR`` says where the control files and the stacks go.
"""
import os
import runpy
from pathlib import Path

_base = runpy.run_path(str(Path(__file__).resolve().parent.parent / "conf" / "gunicorn.conf.py"))
globals().update({k: v for k, v in _base.items() if not k.startswith("_")})


def post_worker_init(worker):
    _base["post_worker_init"](worker)  # the gateway is up and ready; sample from here on
    from bench.cpuprof import CpuSampler

    CpuSampler(Path(os.environ["BENCH_CPUPROF_DIR"])).start()
