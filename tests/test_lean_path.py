"""The lean path (``gateway/web/lean.py``) answers exactly as Flask's path does.

Against the real broker: the session gateway (``http.lean_path`` on, the default) and a gateway of its own with
``http.lean_path = false`` (every request through Flask) get the same raw HTTP requests (hypothesis: methods,
odd and percent-encoded paths, query strings, repeated and hostile headers, bodies, content types, oversize
bodies, HTTP/1.0, keep-alive and fresh connections); status, body, headers and whether the connection stays open
must be the same, apart from what is per request (correlation id, worker, date).

In process, no Kafka (the call stubbed): the edge hook runs for every request the lean path serves, which requests
it leaves to Flask, and the same equivalence on many more generated requests.
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Iterator

import pytest
import tomllib
from hypothesis import example, given, note
from hypothesis import strategies as st
from werkzeug.test import Client, EnvironBuilder

from gateway import create_app
from gateway.config import parse_config
from gateway.errors import GatewayError
from gateway.protocol import Reply
from gateway.web import edge
from gateway.web.lean import LeanPath
from tests.conftest import SESSION_SERVICES, VARIANT_SECTIONS
from tests.support.harness import GunicornGateway, make_config, wait_until
from tests.test_fuzz import RawHTTP, RawResponse, fuzz, http_requests, own_instance_config, send

PER_REQUEST = {"date", "x-correlation-id", "x-gateway-worker"}
# what answers differently per request or per gateway whichever path serves it: readiness and metrics, async
# request ids, services that create entities
ELSEWHERE = (b"/readyz", b"/healthz", b"/metrics", b"/requests", b"/orders", b"/customers", b"/basket")


# -- against the real broker ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def flask_gateway(session_config: Path, broker, example_services, log_dir, tmp_path_factory
                  ) -> Iterator[GunicornGateway]:
    """The session's config with ``http.lean_path = false``, a reply topic and group of its own."""
    path = own_instance_config(session_config, tmp_path_factory, "flaskpath", http={"lean_path": False})
    gw = GunicornGateway(path, broker.bootstrap, log_dir, workers=1)
    try:
        gw.wait_ready(60)
        wait_until(lambda: RawHTTP(gw.url).exchange(b"GET /echo/ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                                                    head=False).status == 200, 60, 0.2, "echo answered")
        yield gw
    finally:
        gw.stop()


@pytest.fixture(scope="module")
def connections(session_config: Path, gateway: GunicornGateway, flask_gateway: GunicornGateway
                ) -> Iterator[list[tuple[str, RawHTTP]]]:
    """(url, keep-alive connection) of the session gateway (lean path on) and of ``flask_gateway``."""
    assert tomllib.loads(session_config.read_text()).get("http", {}).get("lean_path", True)
    conns = [(gateway.url, RawHTTP(gateway.url)), (flask_gateway.url, RawHTTP(flask_gateway.url))]
    yield conns
    for _, conn in conns:
        conn.close()


def comparable(resp: RawResponse) -> tuple[Any, ...]:
    """What must be equal: status, headers (the per-request ones present alike), the body with its correlation id
    blanked out, whether the server closed the connection."""
    body = resp.body
    cid = resp.header("X-Correlation-Id")
    if cid:
        body = body.replace(cid.encode(), b"<correlation id>")
    headers = [(k.lower(), "<per request>" if k.lower() in PER_REQUEST else v) for k, v in resp.headers]
    return resp.status, headers, body, resp.closed


def comparable_requests() -> st.SearchStrategy[dict[str, Any]]:
    """test_fuzz's raw requests, but for those whose answer differs per request whichever path serves it."""
    def same_everywhere(req: dict[str, Any]) -> bool:
        prefer = b" ".join(v for n, v in req["headers"] if n.lower() == "prefer")
        return not req["path"].startswith(ELSEWHERE) and b"respond-async" not in prefer
    return http_requests().filter(same_everywhere)


@pytest.mark.timeout(900)
@fuzz(200)
@given(req=comparable_requests())
@example(req={"method": "GET", "path": b"/echo/a%2Fb/%C3%A9/%ff", "query": b"x=%20&y=\xc3\xa9", "headers": [],
              "body": b"", "content_type": None, "version": b"HTTP/1.1", "fresh": False})
@example(req={"method": "POST", "path": b"/echo/big", "query": None, "headers": [], "body": b"x" * 70000,
              "content_type": b"text/plain", "version": b"HTTP/1.1", "fresh": False})
@example(req={"method": "POST", "path": b"/jsononly", "query": None, "headers": [("X-Request-Id", b"r-1")],
              "body": b'{"customer_id": "c-1"', "content_type": b"application/json", "version": b"HTTP/1.1",
              "fresh": True})
@example(req={"method": "GET", "path": b"/echo//x", "query": None, "headers": [], "body": b"",
              "content_type": None, "version": b"HTTP/1.0", "fresh": False})
@example(req={"method": "GET", "path": b"/echo/x%0A", "query": None, "headers": [("Accept", b"text/event-stream")],
              "body": b"", "content_type": None, "version": b"HTTP/1.1", "fresh": False})
def test_the_lean_path_answers_as_flask_does(connections, req):
    lean, flask = (comparable(send(req, url, keepalive)) for url, keepalive in connections)
    note(f"lean:  {lean}\nflask: {flask}")
    assert lean == flask


# -- in process, the call stubbed ------------------------------------------------------------------------------------
def echo_call(svc: Any, req: Any) -> Reply:
    """What the echo service would answer, without Kafka."""
    doc = {"service": svc.name, "method": req.method, "path": req.path, "query": req.query,
           "content_type": req.content_type, "headers": req.http_headers, "key": repr(req.key),
           "body": req.body.decode("latin-1")}
    return Reply(correlation_id=b"c" * 16, status=200, body=json.dumps(doc).encode(),
                 content_type="application/json", headers=[("etag", '"1"')])


def stub_app(lean: bool) -> Any:
    services = {**SESSION_SERVICES, "states": {"topic": "states.requests", "methods": ["GET", "POST"],
                                               "answer_on": {"topic": "states.events", "states": ["DONE"]}}}
    cfg = make_config("127.0.0.1:1", services, http={"lean_path": lean}, limits={"max_body_bytes": 1000},
                      **VARIANT_SECTIONS)
    app = create_app(parse_config(cfg))
    app.extensions["gateway"].call = echo_call
    return app


@pytest.fixture(scope="module")
def apps() -> tuple[Any, Any]:
    return stub_app(lean=True), stub_app(lean=False)


def test_the_edge_hook_runs_for_every_request_the_lean_path_serves(apps) -> None:
    lean_app = apps[0]
    assert isinstance(lean_app.wsgi_app, LeanPath)
    seen: list[edge.Admission] = []
    handed_to_flask: list[str] = []
    flask_wsgi = lean_app.wsgi_app.flask

    def to_flask(environ: dict[str, Any], start_response: Any) -> Any:
        handed_to_flask.append(environ["PATH_INFO"])
        return flask_wsgi(environ, start_response)

    lean_app.wsgi_app.flask = to_flask

    class Refused(GatewayError):
        status, code, title = 429, "too_many_requests", "Too many requests"

    def policy(admission: edge.Admission) -> None:
        seen.append(admission)
        if admission.header("X-Refuse"):
            raise Refused("slow down")

    lean_app.extensions["edge_policies"] = [policy]
    try:
        client = Client(lean_app)
        ok = client.get("/echo/x?y=1", headers={"User-Agent": "t"})
        refused = client.post("/echo", data=b"{}", headers={"X-Refuse": "1", "Content-Type": "application/json"})
    finally:
        del lean_app.extensions["edge_policies"]
        lean_app.wsgi_app.flask = flask_wsgi
    assert handed_to_flask == []                      # both served by the lean path
    assert [(a.entry, a.service, a.method, a.header("user-agent")) for a in seen] == \
        [("proxy", "echo", "GET", "t"), ("proxy", "echo", "POST", None)]
    assert ok.status_code == 200 and json.loads(ok.data)["path"] == "/echo/x"
    assert ok.headers["X-Gateway-Worker"] and ok.headers["X-Correlation-Id"] == ("63" * 16)
    assert refused.status_code == 429 and refused.mimetype == "application/problem+json"
    assert json.loads(refused.data)["code"] == "too_many_requests" and refused.headers["X-Gateway-Worker"]


def test_request_hooks_of_another_extension_turn_the_lean_path_off() -> None:
    """An ``after_request`` (CORS headers) or a ``before_request`` needs Flask's context: with one, every request
    takes Flask's path, and the hook runs."""
    app = stub_app(lean=True)
    assert Client(app).get("/echo/x").headers.get("Access-Control-Allow-Origin") is None

    @app.after_request
    def cors(response: Any) -> Any:
        response.headers["Access-Control-Allow-Origin"] = "*"
        return response

    answer = Client(app).get("/echo/x")
    assert answer.status_code == 200 and answer.headers["Access-Control-Allow-Origin"] == "*"


@pytest.mark.parametrize("setting", [{"TRUSTED_HOSTS": ["gateway.example"]}, {"SERVER_NAME": "gateway.example"}])
def test_an_app_that_checks_the_host_sends_every_request_to_flask(setting: dict[str, Any]) -> None:
    config = parse_config(make_config("127.0.0.1:1", SESSION_SERVICES))
    app = create_app(config)
    app.config.update(setting)
    assert LeanPath(app, app.wsgi_app).services == {}


@pytest.mark.parametrize(("method", "path", "headers", "lean"), [
    ("GET", "/echo", {}, True),
    ("GET", "/echo/a/b/", {}, True),
    ("OPTIONS", "/echo/a", {}, True),
    ("GET", "/nosuch/a", {}, False),                 # 404 from Flask's path, as ever
    ("GET", "/echo/", {}, False),                    # werkzeug: no route
    ("GET", "/echo//a", {}, False),                  # werkzeug: a redirect
    ("GET", "/echo/a\nb", {}, False),                # werkzeug's path converter stops at a newline
    ("BREW", "/echo/a", {}, False),                  # not a method of the routes: werkzeug's 405
    ("GET", "/healthz", {}, False),
    ("GET", "/requests/abc", {}, False),
    ("GET", "/echo/a", {"Prefer": "respond-async"}, False),
    ("GET", "/ticker/a", {"Accept": "application/x-ndjson"}, False),
    ("POST", "/states/s-1", {}, False),              # answer on state
    ("GET", "/states/s-1", {}, True),                # a method answer_on does not list: plain
    ("GET", "/states/s-1", {"If-None-Match": '"1"', "Prefer": "wait=1"}, False),
])
def test_what_the_lean_path_serves_and_what_it_leaves_to_flask(apps, method: str, path: str,
                                                                headers: dict[str, str], lean: bool) -> None:
    lean_app = apps[0]
    handed: list[bool] = []
    flask_wsgi = lean_app.wsgi_app.flask
    lean_app.wsgi_app.flask = lambda environ, sr: handed.append(True) or [b""]
    try:
        environ = EnvironBuilder(method=method, headers=headers).get_environ()
        environ["PATH_INFO"] = path                # as the server decoded it, newline included
        list(lean_app.wsgi_app(environ, lambda *a: None))
    finally:
        lean_app.wsgi_app.flask = flask_wsgi
    assert handed == ([] if lean else [True])


SEGMENTS = st.lists(st.one_of(st.sampled_from(["", ".", "..", "%", "a b", "é", "\n", "\x00", "\ufffd", "x" * 50]),
                              st.text(max_size=6)), max_size=4).map("/".join)
RAW = st.binary(max_size=6).map(lambda b: b.decode("latin-1"))       # bytes that need not be UTF-8
HEADER_VALUES = st.sampled_from(["", "*/*", "application/json", "text/plain", "wait=1", "wait=x", '"e"', "é",
                                 "x\x7f", "application/x-ndjson;q=0", "text/event-stream", "a, b"])


@fuzz(400)
@given(method=st.sampled_from(["GET", "GET", "HEAD", "POST", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "BREW"]),
       # not the variants that wait on tails this app never started (answer on state, async requests, polls)
       service=st.sampled_from(["echo", "echo", "echo", "jsononly", "orders", "ticker", "nosuch", "healthz", "ws"]),
       rest=st.none() | st.from_regex(r"[a-z0-9._~-]{1,8}(/[a-zA-Z0-9%._-]{1,8}){0,3}/?", fullmatch=True) | SEGMENTS
       | st.tuples(SEGMENTS, RAW).map("".join),
       query=st.binary(max_size=20).map(lambda b: b.decode("latin-1")),
       headers=st.dictionaries(st.sampled_from(["Accept", "Prefer", "If-None-Match", "X-Request-Id", "traceparent",
                                                "User-Agent", "Authorization", "Transfer-Encoding"]),
                               HEADER_VALUES, max_size=4),
       content_type=st.sampled_from([None, "application/json", "text/plain", "", "text/plain; charset=latin-1",
                                     "application/x-www-form-urlencoded", "multipart/form-data; boundary=b"]),
       body=st.one_of(st.binary(max_size=40), st.sampled_from([b'{"customer_id": 1}', b"{", b"a=b", b"x" * 1001])))
def test_in_process_the_lean_path_answers_as_flask_does(apps, method, service, rest, query, headers, content_type,
                                                        body) -> None:
    """Many more requests than the broker test affords, the call stubbed: the same status, headers and body."""
    path = "/" + service + ("" if rest is None else "/" + rest)
    built = EnvironBuilder(method=method, headers=headers, data=body, content_type=content_type).get_environ()
    # PATH_INFO as a server decodes it: bytes as Latin-1 text
    built["PATH_INFO"] = path.encode("utf-8", "surrogatepass").decode("latin-1")
    built["QUERY_STRING"] = query
    if not body:
        built.pop("CONTENT_LENGTH", None)
    answers = []
    for app in apps:
        environ = {**built, "wsgi.input": io.BytesIO(body)}
        started: list[Any] = []
        chunks = b"".join(app(environ, lambda status, hdrs, exc_info=None, into=started: into.extend([status, hdrs])))
        worker = [(k, "<worker>" if k == "X-Gateway-Worker" else v) for k, v in started[1]]
        answers.append((started[0], worker, chunks))
    note(f"{path!r}: lean {answers[0]}\nflask {answers[1]}")
    assert answers[0] == answers[1]
