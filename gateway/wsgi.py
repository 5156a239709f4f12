"""The gunicorn target: ``gunicorn -c python:gateway.serve.gunicorn_conf gateway.wsgi:app`` (``gateway serve``)."""
from gateway import create_app

app = create_app()
