"""The push routes' own parsers read every request as bottle and gevent did.

``replies.Body`` parses an urlencoded body (and the query string) itself instead of
going through bottle's ``request.forms`` and ``FormsDict.decode``; these tests
compare the two on random bytes and Content-Types: the same fields in the same
order, or the same refusal (status and message). The server reads plain request
headers without the email parser; they are compared with what gevent read. The
express lane answers most pushes before gevent's handler and bottle see them; over
real sockets, its replies are compared with theirs.
"""

from __future__ import annotations

import io
import json
import re
import types
import uuid

import bottle
import gevent
import gevent.socket
import pytest
import redis
from gevent.pywsgi import WSGIHandler, headers_factory
from harness import free_port
from hypothesis import given, settings
from hypothesis import strategies as st

from coyotes_lib.api import make_app, make_push
from coyotes_lib.config import Config
from coyotes_lib.model import ChannelSpec, Enqueued
from coyotes_lib.replies import BODY_READ, Body, parse_form, urlencoded
from coyotes_lib.routes import Api
from coyotes_lib.server import PlainHeaders, make_server, read_headers
from coyotes_lib.task import POLICY_LIMITS, new_id, uuid4_hex

# bytes that mean something to a form parser, and some that are not UTF-8
FORM_BYTES = st.binary().map(bytes) | st.lists(
    st.sampled_from([b"&", b"=", b"+", b"%", b"%2", b"%41", b"%e9", b"%C3%A9", b"%zz",
                     b"a", b"args", b"[", b"]", b"[0]", b"[]", b"1", b";", b" ",
                     b"\xc3\xa9", b"\xff", b"\x80", b"\xed\xa0\x80", b"task",
                     b"retry_on", b"retries", b"timeout", b"kill_group", b",", b"75"]),
    max_size=24).map(b"".join)
CONTENT_TYPES = st.lists(
    st.sampled_from(["application/x-www-form-urlencoded", "multipart/form-data",
                     "Multipart/form-data", "text/plain", "application/json", "", " ",
                     ";", ",", "=", '"', "charset=utf-8", "boundary=x", "charset",
                     "\t"]),
    max_size=5).map("".join)
SETTINGS = settings(max_examples=400, deadline=None, derandomize=True)


def bottle_form(data: bytes) -> dict:
    """What bottle made of a form: _parse_qsl over latin-1, then decode('utf-8')."""
    forms = bottle.FormsDict()
    for key, value in bottle._parse_qsl(data.decode("latin-1")):
        forms[key] = value
    return forms.decode("utf-8").dict


def outcome(call):
    try:
        return "ok", call()
    except UnicodeError:
        return "unicode", None
    except bottle.HTTPResponse as response:
        return response.status_code, response.body


@SETTINGS
@given(FORM_BYTES)
def test_a_form_parses_as_bottle_parsed_it(data):
    assert outcome(lambda: parse_form(data)) == outcome(lambda: bottle_form(data))
    if outcome(lambda: parse_form(data))[0] == "ok":   # same order of names as well
        assert list(parse_form(data)) == list(bottle_form(data))


@SETTINGS
@given(CONTENT_TYPES)
def test_only_what_bottle_reads_as_an_urlencoded_form_takes_the_fast_path(content_type):
    if not urlencoded(content_type):
        return   # bottle reads it, as before
    parsed = bottle._parse_http_header(content_type)   # does not raise
    assert not parsed[0][0].startswith("multipart/")


def request(body: bytes, content_type: str, query: str, guarded: bool) -> dict:
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/channels/c", "QUERY_STRING": query,
               "CONTENT_TYPE": content_type, "CONTENT_LENGTH": str(len(body)),
               "wsgi.input": io.BytesIO(body)}
    if guarded:
        environ[BODY_READ] = body
    return environ


def policy_read_in_full(body: Body) -> dict:
    """Body.policy without its shortcut (what it was before)."""
    given = {key: body.get(key) for key in POLICY_LIMITS if body.get(key) not in (None, "")}
    codes = [code for value in body.get_list("retry_on")
             for code in (value.split(",") if isinstance(value, str) else [value])]
    if "retry_on" in given or any(str(code).strip() for code in codes):
        given["retry_on"] = codes
    return given


def fields(body: Body):
    if body.json is not None:
        return body.json
    assert body.policy() == policy_read_in_full(body)
    return body.forms, list(body.forms), body.query, list(body.query), \
        body.get_list("args"), body.get("task"), body.policy()


def compare(body: bytes, content_type: str, query: str) -> None:
    old = outcome(lambda: fields(Body(request(body, content_type, query, guarded=False))))
    new = outcome(lambda: fields(Body(request(body, content_type, query, guarded=True))))
    assert new == old


@SETTINGS
@given(FORM_BYTES, CONTENT_TYPES, FORM_BYTES.map(lambda b: b.decode("latin-1")))
def test_a_body_reads_the_same_with_or_without_the_guards_copy(body, content_type, query):
    compare(body, content_type, query)


@pytest.mark.parametrize("body, query", [
    (b"task=a+b&args[1]=y&args[0]=x&args[x]=z", ""),
    (b"task=a&args[]=1&args[]=2", "args=3"),
    (b"task=a", "args[2]=c&args[10]=d&args[1]=b"),
    (b"task=%E4%BD%A0%E5%A5%BD&retry_on[]=1&retry_on[]=75,76&timeout=5", "retries=2"),
    (b"task=x&retry_on[1]=75&retry_on[0]=1", ""), (b"task=x", "retry_on[]=2"),
    (b"task=x&retry_on[0]=", "kill_group=false"),
    (b"task=caf%E9", ""),            # latin-1 escape: not UTF-8
    (b"task=ok", "x=%ff"),           # the query's bytes are checked too
    (b"timeout=&retries=&task=x", ""),
    (b"a" * (bottle.BaseRequest.MEMFILE_MAX + 1), ""),   # bottle's 413
    (b"=&&=x&task", "task=from+query"),
])
@pytest.mark.parametrize("content_type", [
    "application/x-www-form-urlencoded", "application/x-www-form-urlencoded; charset=UTF-8",
    "", "text/plain", "application/x-www-form-urlencoded; charset"])
def test_tricky_forms_read_the_same(body, query, content_type):
    compare(body, content_type, query)


@pytest.mark.parametrize("body", [
    b'{"task": "a", "args": [1, "b"]}', b"[1]", b"", b"{", b'{"x": NaN}',
    b'{"task": "\\ud800"}', json.dumps({"command": {"name": "x"}}).encode()])
def test_json_bodies_read_the_same(body):
    compare(body, "application/json", "")


# -- request headers ------------------------------------------------------------
HEADER_BYTES = st.lists(
    st.sampled_from([b"Host", b"Content-Type", b"X_Y", b":", b": ", b"\t", b" ", b"From ",
                     b"v", b"a b", b"\r\n", b"\n", b"\r", b"\x85", b"\x0c", b"\xe9", b"\x00",
                     b"application/x-www-form-urlencoded", b"Content-Length: 5\r\n"]),
    max_size=30).map(b"".join)


def parsed_headers(read):
    try:
        message = read()
    except Exception as exc:   # the same error, or none
        return type(exc), str(exc)
    seen = [message.status, list(message._headers), list(message.headers),
            list(WSGIHandler._headers(types.SimpleNamespace(headers=message)))]
    if isinstance(message, PlainHeaders):   # the handler's shortcut to the same
        assert list(message.environ_items()) == seen[-1]
    names = ("host", "Content-Length", "content-type", "X_Y", "v", "absent")
    seen.append([message.get(name, "-") for name in names])
    del message["content-length"]   # as gevent does for a chunked body
    message["V"] = "added"
    seen.append([message.get(name, "-") for name in names])
    seen.append(list(message._headers))
    return seen


def compare_headers(data: bytes) -> None:
    old = parsed_headers(lambda: headers_factory(io.BytesIO(data)))
    new = parsed_headers(lambda: read_headers(io.BytesIO(data)))
    assert new == old


@SETTINGS
@given(HEADER_BYTES)
def test_request_headers_read_as_gevent_read_them(block):
    for data in (block, block + b"\r\n\r\n", b"Host: x\r\n" + block + b"\r\n"):
        compare_headers(data)


@pytest.mark.parametrize("data", [
    b"Host: 127.0.0.1:1\r\nContent-Type: a\r\n\r\nbody", b"Host:x  \r\n\r\n",
    b"Host: x\r\n folded\r\n\r\n", b"X: " + b"a" * 70000 + b"\r\n\r\n",
    b"".join(b"X%d: y\r\n" % i for i in range(120)) + b"\r\n", b"Host: x\n\n",
    b"From x\r\nHost: y\r\n\r\n", b"Host: x\rY: z\r\n\r\n", b"Host: x",
    (b"X-A: 1\r\nx-a: 2\r\nX_B: 3\r\nContent-Type: t\r\ncontent-length: 4\r\n"
     b"V: \x0b a \x0c\r\nCOOKIE: a\r\nCookie: b\r\n\r\n")])
def test_tricky_headers_read_as_gevent_read_them(data):
    compare_headers(data)


@SETTINGS
@given(st.binary(min_size=16, max_size=16))
def test_a_new_task_id_is_a_uuid4_hex(random):
    assert uuid4_hex(random) == uuid.UUID(bytes=random, version=4).hex
    assert uuid.UUID(new_id()).version == 4


# -- the express lane -------------------------------------------------------------
class FakeBroker:
    """What the push routes ask of a broker; a channel's name says how it answers."""

    node = "n1"

    def channel(self, name):
        return None if name == "gone" else ChannelSpec(name, name == "dup", 5)

    def now(self):
        return 1_000_000.0

    def push(self, task, distinct):
        outcome = {"down": redis.ConnectionError("refused"),
                   "oom": redis.OutOfMemoryError("full"),
                   "wrongtype": redis.ResponseError("WRONGTYPE"),
                   "bug": RuntimeError("bug"), "dup": Enqueued.REFUSED,
                   "inuse": Enqueued.ID_IN_USE, "delay": Enqueued.DELAYED}
        result = outcome.get(task.channel, Enqueued.QUEUED)
        if isinstance(result, Exception):
            raise result
        return result


# -- the express lane: pushes answered before gevent's handler and bottle ---------
MAX_BODY = 2048
LANE_PATH = re.compile(r"/channels/[A-Za-z0-9_.-]+(/tasks)?")


@pytest.fixture(scope="module")
def lane():
    """An API server in this process (gevent sockets, no monkey patching) over the
    fake broker, with its express lane -> its port."""
    config = Config(http_port=free_port(), max_body=MAX_BODY)
    api = Api(FakeBroker(), config)
    server = make_server(make_app(api), config, 50, make_push(api))
    lane = types.SimpleNamespace(port=config.http_port, answers=0)
    answer = server.express.answer

    def counted(*args):   # tells which requests the lane answered itself
        lane.answers += 1
        return answer(*args)
    server.express.answer = counted
    server.start()
    yield lane
    server.stop(timeout=1)


def read_reply(sock, buffered: bytes = b"") -> tuple[bytes, bytes]:
    """One HTTP reply from ``sock`` (headers, then Content-Length bytes) -> (the
    reply, what came after it)."""
    interim = b"HTTP/1.1 100 Continue\r\n\r\n"
    while b"\r\n\r\n" not in buffered.removeprefix(interim):
        data = sock.recv(65536)
        assert data, f"connection closed mid-reply: {buffered!r}"
        buffered += data
    head, _, rest = buffered.removeprefix(interim).partition(b"\r\n\r\n")
    head = interim * buffered.startswith(interim) + head
    length = re.search(rb"\r\nContent-Length: (\d+)", head)
    if length is None:   # gevent's own refusal of a bad request: a body, then close
        while data := sock.recv(65536):
            rest += data
        return head + b"\r\n\r\n" + rest, b""
    length = int(length[1])
    while len(rest) < length:
        rest += sock.recv(65536)
    return head + b"\r\n\r\n" + rest[:length], rest[length:]


def exchange(lane, request: bytes, split: bool) -> tuple[bytes, bool, bool]:
    """``request`` sent on a new connection, in one write or in two (then the express
    lane has only part of it and gevent's handler answers) -> (the reply without its
    Date and with task ids as ID, whether the server then closed the connection, whether
    the lane answered it)."""
    before = lane.answers
    with gevent.socket.create_connection(("127.0.0.1", lane.port)) as sock:
        if split:
            sock.sendall(request[:9])
            gevent.sleep(0.02)
            sock.sendall(request[9:])
        else:
            sock.sendall(request)
        reply, rest = read_reply(sock)
        assert rest == b""
        with gevent.Timeout(5):
            closed = sock.recv(1) == b"" if b"Connection: close" in request + reply \
                else False
    by_lane = lane.answers > before
    assert not (split and by_lane)   # a request split in two is gevent's
    reply = re.sub(rb"\r\nDate: [^\r]*", b"", reply)
    return re.sub(rb"[0-9a-f]{32}", b"ID", reply), closed, by_lane


def same_reply_both_ways(lane, request: bytes) -> bool:
    """The reply to ``request`` in one write is the one gevent and bottle give when
    it comes in two -> whether the lane answered the first."""
    reply, closed, by_lane = exchange(lane, request, split=False)
    assert (reply, closed) == exchange(lane, request, split=True)[:2]
    return by_lane


def push_request(path: str, body: bytes, content_type: str, headers: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n{headers}\r\n").encode("latin-1") + body


@pytest.mark.parametrize("path", [
    "/channels/c", "/channels/c/tasks", "/channels/gone", "/channels/gone/tasks",
    "/channels/down", "/channels/oom/tasks", "/channels/wrongtype", "/channels/bug",
    "/channels/bug/tasks", "/channels/dup", "/channels/inuse/tasks", "/channels/c/",
    "/channels/caf%C3%A9", "/channels/c%2Fd"])
@pytest.mark.parametrize("body, content_type", [
    (b"task=true+a", "application/x-www-form-urlencoded"),
    (b"task=true&id=x1&delay=5&timeout=3", "application/x-www-form-urlencoded"),
    (b"task=true&delay=x", ""), (b"task=caf%E9", ""), (b"", ""),
    (b'{"command": {"name": "true", "args": [1]}, "id": "j1"}', "application/json"),
    (b'{"task": 1}', "application/json"), (b"[", "application/json"),
    (b"task=true", "multipart/form-data; boundary=x"),
    (b"a" * (MAX_BODY + 1), "text/plain")])
def test_the_express_lane_answers_as_gevent_and_bottle_do(lane, path, body, content_type):
    request = push_request(path, body, content_type)
    # the lane takes a plain channel name; an escaped or empty one is gevent's
    assert same_reply_both_ways(lane, request) == bool(LANE_PATH.fullmatch(path))


@pytest.mark.parametrize("headers", [
    "Origin: http://evil.example\r\n", "Sec-Fetch-Site: cross-site\r\n",
    "Host: evil.example\r\n", "Connection: close\r\n", "Connection: keep-alive\r\n",
    "Connection: Upgrade\r\nUpgrade: x\r\n", "X_Y: 1\r\n", "X-A: 1\r\nx-a: 2\r\n",
    "Expect: 100-continue\r\n", "User-Agent: \xe9\t \r\n", "Cookie: a\r\n"])
def test_the_express_lane_refuses_and_closes_as_gevent_and_bottle_do(lane, headers):
    request = push_request("/channels/c", b"task=true", "application/x-www-form-urlencoded",
                           headers)
    if "Host: evil" in headers:   # the second Host is the one that counts: make it the only
        request = request.replace(b"Host: 127.0.0.1\r\n", b"")
    for_gevent = ("Upgrade", "X_Y", "x-a", "Expect")   # an upgrade, '_', repeated, 100-continue
    assert same_reply_both_ways(lane, request) == (not any(h in headers for h in for_gevent))


@pytest.mark.parametrize("length", [b"+9", b"09", b"\xb2", b"9 ", b"8", b"99999999999"])
def test_odd_content_lengths_are_answered_as_gevent_and_bottle_do(lane, length):
    request = push_request("/channels/c", b"task=true", "application/x-www-form-urlencoded")
    request = request.replace(b"Content-Length: 9", b"Content-Length: " + length)
    assert same_reply_both_ways(lane, request) == (length.strip().isdigit()
                                                   and len(length.strip()) < 10)


def test_pushes_and_other_requests_on_one_connection_are_answered_in_order(lane):
    """Two pushes and a GET in one write, then a push: the lane answers the first two,
    gevent's handler the GET and everything after it on that connection."""
    first = push_request("/channels/c", b"task=true+1", "application/x-www-form-urlencoded")
    second = push_request("/channels/dup/tasks", b'{"task": "true 2"}', "application/json")
    get = b"GET /elsewhere HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    third = push_request("/channels/gone", b"task=true+3", "application/x-www-form-urlencoded")
    before = lane.answers
    with gevent.socket.create_connection(("127.0.0.1", lane.port)) as sock:
        sock.sendall(first + second + get)
        replies, rest = [], b""
        for _ in range(3):
            reply, rest = read_reply(sock, rest)
            replies.append(reply)
        sock.sendall(third)
        replies.append(read_reply(sock, rest)[0])
    assert [reply.split(b"\r\n", 1)[0] for reply in replies] == [
        b"HTTP/1.1 200 OK", b"HTTP/1.1 200 OK", b"HTTP/1.1 404 Not Found",
        b"HTTP/1.1 404 Not Found"]
    assert b'"task_name": "true 1"' in replies[0]
    assert b'"result": false' in replies[1]   # dup: a distinct channel refused it
    assert b"channel 'gone' does not exist" in replies[3]
    assert lane.answers - before == 2   # the two pushes before the GET


def test_a_push_whose_body_comes_later_is_answered(lane):
    request = push_request("/channels/c/tasks", b"task=true+late&id=late1",
                           "application/x-www-form-urlencoded")
    with gevent.socket.create_connection(("127.0.0.1", lane.port)) as sock:
        sock.sendall(request[:-5])
        gevent.sleep(0.05)
        sock.sendall(request[-5:])
        reply, _ = read_reply(sock)
    assert reply.startswith(b"HTTP/1.1 200 OK") and b'"task_id": "late1"' in reply


def test_no_express_lane_with_the_access_log():
    """-debug logs every request through gevent's handler: the lane is off."""
    config = Config(http_port=free_port(), debug=True)
    api = Api(FakeBroker(), config)
    assert make_server(make_app(api), config, 5, make_push(api)).express is None
