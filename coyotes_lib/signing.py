"""Signed producers: an HMAC-SHA256, with a key shared between a producer and
the daemon, over the exact bytes of what is pushed and a timestamp.

A prepare-queue entry is signed as an envelope around the payload's own JSON
text, so that no canonical JSON is needed in PHP or any other language::

    {"payload": "<the entry's JSON, as text>", "key_id": "k1", "ts": 1765000000,
     "sig": hex(HMAC(secret, "coyotes1\\n" + key_id + "\\n" + ts + "\\n" + payload))}

An HTTP push carries ``X-Coyotes-Key``, ``X-Coyotes-Timestamp`` and
``X-Coyotes-Signature`` = hex(HMAC(secret, "coyotes1\\n" + key_id + "\\n" + ts
+ "\\n" + METHOD + " " + path[?query] + "\\n" + Content-Type + "\\n" + body)).
See docs/SECURITY.md.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import re

VERSION = "coyotes1"
# a queue entry may wait this long (a backlog, every node down for a deploy) before
# it is routed; an HTTP push must arrive within the -signature-max-age
QUEUE_MAX_AGE = 86400.0
KEY_ID = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
ENVELOPE = frozenset({"payload", "key_id", "ts", "sig"})


class Unsigned(Exception):
    """A push whose signature is missing, wrong or too old: the reason."""


@dataclasses.dataclass(frozen=True)
class Signatures:
    keys: tuple[tuple[str, bytes], ...] = dataclasses.field(default=(), repr=False)
    required: bool = False     # else: a signed push is checked, an unsigned one passes
    max_age: float = 300.0     # seconds a signature is good for, either way of now

    def secret(self, key_id) -> bytes:
        given = key_id.encode("utf-8", "surrogateescape") if isinstance(key_id, str) else b""
        for known, secret in self.keys:
            if hmac.compare_digest(known.encode(), given):
                return secret
        raise Unsigned(f"unknown signing key {str(key_id)[:64]!r}")

    def check(self, key_id, ts, message: bytes, sig) -> None:
        secret = self.secret(key_id)
        if isinstance(ts, bool) or not isinstance(ts, int | str) or not str(ts).isdigit():
            raise Unsigned("the signature's timestamp must be whole unix seconds")
        expected = hmac.new(secret, message, hashlib.sha256).hexdigest().encode()
        if not isinstance(sig, str) or not hmac.compare_digest(
                expected, sig.lower().encode("utf-8", "surrogateescape")):
            raise Unsigned("wrong signature")

    def fresh(self, ts, now: float, oldest: float = 0.0) -> None:
        age, oldest = now - int(ts), max(oldest, self.max_age)
        if age > oldest:
            raise Unsigned(f"signature too old ({age:+.0f} s; at most {oldest:g} s)")
        if -age > self.max_age:
            raise Unsigned(f"signature from the future ({age:+.0f} s; at most "
                           f"{self.max_age:g} s ahead)")

    def entry(self, raw: str, now: float) -> str:
        """A prepare-queue entry -> the entry to route: the payload of a signed one
        (checked), an unsigned one as it is unless signatures are required."""
        data = None
        if raw.startswith("{") and '"sig"' in raw:
            try:
                data = json.loads(raw)
            except ValueError:
                data = None
        if not isinstance(data, dict) or "sig" not in data:
            if self.required:
                raise Unsigned("unsigned entry (signatures are required)")
            return raw
        if set(data) != ENVELOPE or not isinstance(data["payload"], str):
            raise Unsigned(f"a signed entry has exactly the fields {', '.join(sorted(ENVELOPE))}, "
                           "payload being the entry's JSON as text")
        payload, key_id, ts = data["payload"], data["key_id"], data["ts"]
        self.check(key_id, ts, f"{VERSION}\n{key_id}\n{ts}\n".encode() +
                   payload.encode("utf-8", "surrogateescape"), data["sig"])
        self.fresh(ts, now, QUEUE_MAX_AGE)
        return payload

    def request(self, environ, body: bytes, now: float) -> None:
        """An HTTP push: Unsigned unless its headers sign it (or it is unsigned and
        signatures are not required)."""
        key_id = environ.get("HTTP_X_COYOTES_KEY")
        ts = environ.get("HTTP_X_COYOTES_TIMESTAMP")
        sig = environ.get("HTTP_X_COYOTES_SIGNATURE")
        if key_id is None and ts is None and sig is None:
            if self.required:
                raise Unsigned("unsigned push: send X-Coyotes-Key, X-Coyotes-Timestamp and "
                               "X-Coyotes-Signature (signatures are required)")
            return
        query = environ.get("QUERY_STRING") or ""
        target = environ.get("PATH_INFO", "") + (f"?{query}" if query else "")
        # the Content-Type too: it says how the body is read (a form, or JSON)
        self.check(key_id, ts, f"{VERSION}\n{key_id}\n{ts}\n"
                   f"{environ.get('REQUEST_METHOD', '')} {target}\n"
                   f"{environ.get('CONTENT_TYPE', '')}\n".encode() + body, sig)
        self.fresh(ts, now)


def read_keys(path: str) -> tuple[tuple[str, bytes], ...]:
    """-signature-keys: ``KEY_ID SECRET`` a line, ``#`` comments; ValueError with the
    line at fault."""
    keys = []
    with open(path, encoding="utf-8") as file:
        for number, line in enumerate(file, 1):
            words = comment_cut(line)
            if not words:
                continue
            if len(words) != 2 or not KEY_ID.match(words[0]) or len(words[1]) < 16:
                raise ValueError(f"line {number}: expected KEY_ID SECRET (an id of letters, "
                                 "digits, '_', '-', '.'; a secret of 16 characters or more)")
            if any(known == words[0] for known, _ in keys):
                raise ValueError(f"line {number}: key {words[0]!r} given twice")
            keys.append((words[0], words[1].encode()))
    if not keys:
        raise ValueError("no key in it")
    return tuple(keys)


def comment_cut(line: str) -> list[str]:
    """The words of a line of a keys or tokens file, up to a word that starts with '#'
    (a '#' inside a secret is part of it)."""
    words = line.split()
    for i, word in enumerate(words):
        if word.startswith("#"):
            return words[:i]
    return words
