"""A CPU-time sampling profiler for one gunicorn worker: ``SIGPROF`` from ``setitimer(ITIMER_PROF)``.

Why not py-spy: py-spy counts a thread as active while it is runnable, also when it waits for a core. On a
machine other sessions saturate, a loaded worker waits in the run queue most of the time (``/proc/<pid>/schedstat``
showed 40 ms run per 1,000 ms waited), so py-spy recorded ~500 samples in a window where the worker used 37 ticks
of CPU, most of them at the frames where it was preempted (a ``send`` that woke the receiver). ``ITIMER_PROF``
counts the process's own CPU time (user + system), so every sample stands for the same CPU time, however busy the
machine is. The handler runs in the main thread, where a gevent worker runs all its greenlets, at the next bytecode:
time in C (libev, a syscall) is charged to the Python frame that called it or that resumes after it.

Used by ``bench/gunicorn_cpuprof.conf.py`` (the shipped gunicorn config plus this): sampling is armed in each
worker and records only while the file ``$BENCH_CPUPROF_DIR/on`` exists; when ``$BENCH_CPUPROF_DIR/dump``
appears, each worker writes ``<pid>.txt`` in py-spy's collapsed ("raw") format and stops.
"""
from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path
from types import FrameType

INTERVAL_S = 0.005  # one sample per 5 ms of the process's CPU time


class CpuSampler:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.on = directory / "on"
        self.dump = directory / "dump"
        self.stacks: Counter[str] = Counter()
        self._checked = 0.0
        self._recording = False

    def start(self) -> None:
        signal.signal(signal.SIGPROF, self._sample)
        signal.setitimer(signal.ITIMER_PROF, INTERVAL_S, INTERVAL_S)

    def _sample(self, _signum: int, frame: FrameType | None) -> None:
        now = time.monotonic()
        if now - self._checked > 0.1:  # look at the control files at most 10 times a second
            self._checked = now
            if self.dump.exists():
                signal.setitimer(signal.ITIMER_PROF, 0, 0)
                (self.dir / f"{os.getpid()}.txt").write_text(
                    "".join(f"{stack} {n}\n" for stack, n in self.stacks.items()))
                return
            self._recording = self.on.exists()
        if not self._recording:
            return
        names = []
        while frame is not None:
            code = frame.f_code
            names.append(f"{code.co_qualname} ({code.co_filename}:{frame.f_lineno})")
            frame = frame.f_back
        self.stacks[";".join(reversed(names))] += 1
