"""The push routes' own form parser reads every body as bottle did.

``replies.Body`` parses an urlencoded body (and the query string) itself instead of
going through bottle's ``request.forms`` and ``FormsDict.decode``; these tests
compare the two on random bytes and Content-Types: the same fields in the same
order, or the same refusal (status and message).
"""

from __future__ import annotations

import io
import json

import bottle
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coyotes_lib.replies import BODY_READ, Body, parse_form, urlencoded

# bytes that mean something to a form parser, and some that are not UTF-8
FORM_BYTES = st.binary().map(bytes) | st.lists(
    st.sampled_from([b"&", b"=", b"+", b"%", b"%2", b"%41", b"%e9", b"%C3%A9", b"%zz",
                     b"a", b"args", b"[", b"]", b"[0]", b"[]", b"1", b";", b" ",
                     b"\xc3\xa9", b"\xff", b"\x80", b"\xed\xa0\x80", b"task"]),
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


def request(body: bytes, content_type: str, query: str, guarded: bool) -> bottle.BaseRequest:
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/channels/c", "QUERY_STRING": query,
               "CONTENT_TYPE": content_type, "CONTENT_LENGTH": str(len(body)),
               "wsgi.input": io.BytesIO(body)}
    if guarded:
        environ[BODY_READ] = body
    return bottle.BaseRequest(environ)


def fields(body: Body):
    if body.json is not None:
        return body.json
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
