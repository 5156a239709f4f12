"""Serving the gateway with gunicorn, from the package alone (no source tree needed): the gunicorn config
(:mod:`gateway.serve.gunicorn_conf`), the worker class (:mod:`gateway.serve.worker`, with the outermost WSGI
safety net :mod:`gateway.serve.safety`), the packaged default config (``defaults.toml``: brokers on
localhost:9092, one ``echo`` service) and ``gateway serve``, which runs::

    gunicorn -c python:gateway.serve.gunicorn_conf gateway.wsgi:app

Loaded by the gunicorn master: import nothing that imports kafka here.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import MutableMapping, NoReturn, Sequence

from gateway.config import PACKAGED_CONFIG  # the packaged defaults (defaults.toml), re-exported here

__all__ = ["GUNICORN_CONFIG", "PACKAGED_CONFIG", "config_in_use", "gunicorn_argv", "serve", "use_packaged_defaults"]

GUNICORN_CONFIG = "python:gateway.serve.gunicorn_conf"
APP = "gateway.wsgi:app"


def config_in_use(env: MutableMapping[str, str] | None = None) -> Path:
    """The gateway's config file: ``GATEWAY_CONFIG``, else the source tree's ``conf/gateway.toml`` (an editable
    install or a run from the repository), else the packaged defaults (a wheel install)."""
    from gateway.config import config_path

    return config_path(env)


def use_packaged_defaults(env: MutableMapping[str, str] | None = None) -> Path:
    """Point ``GATEWAY_CONFIG`` at :func:`config_in_use` when it is unset, so that the master and every worker
    (which inherit the environment) read the same file. Returns that file."""
    env = os.environ if env is None else env
    path = config_in_use(env)
    env.setdefault("GATEWAY_CONFIG", str(path))
    return path


def gunicorn_argv(bind: Sequence[str] = (), workers: int | None = None, extra: Sequence[str] = ()) -> list[str]:
    """The gunicorn command line of ``gateway serve`` (command-line settings win over the config's)."""
    argv = [sys.executable, "-m", "gunicorn", "-c", GUNICORN_CONFIG]
    for address in bind:
        argv += ["--bind", address]
    if workers is not None:
        argv += ["--workers", str(workers)]
    return [*argv, *extra, APP]


def serve(config: str | None = None, bind: Sequence[str] = (), workers: int | None = None,
          extra: Sequence[str] = ()) -> NoReturn:
    """Become the gunicorn master (exec: same pid, so a supervisor's signals reach gunicorn: TERM, HUP, TTIN...)."""
    if config:
        os.environ["GATEWAY_CONFIG"] = str(Path(config).resolve())
    use_packaged_defaults()
    argv = gunicorn_argv(bind, workers, extra)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)
