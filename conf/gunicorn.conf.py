"""gunicorn settings of the example deployment (``gunicorn -c conf/gunicorn.conf.py gateway.wsgi:app``): the
packaged ones, :mod:`gateway.serve.gunicorn_conf` (what ``gateway serve`` uses), unchanged. A deployment that
needs other settings overrides them below the import, e.g. ``timeout = 90``; the hooks (config check in the
master, the Kafka side started in each worker) come from the packaged file.

No kafka import here: this runs in the master, before gevent patches (see the packaged file).
"""
from gateway.serve.gunicorn_conf import *  # noqa: F403 - every setting and hook (its __all__)
