"""What a task is: its payload, its argv, and how raw entries become tasks.

Producers push JSON (``task``/``chan``/``ts``, later also ``id``,
``command`` = ``{"name", "args"}`` and ``execute_at``); the Go v1.0-beta
daemon left bare command strings in channel queues. ``from_producer``
validates and normalises a producer's entry into the payload a channel queue
holds (always with an ``id``); ``from_queue`` reads either form back.
A bad entry raises ``BadTask`` with a reason fit for the dead-letter list.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shlex
import time

MAX_COMMAND = 64 * 1024  # characters of command line, argv included
MAX_ENTRY = 1 << 20      # bytes of one prepare-queue entry
# a command line without quotes or backslashes: shlex.split only cuts it at
# runs of these (and is ten times slower at it)
UNQUOTED = re.compile(r"[^'\"\\]*")
SHELL_BLANKS = re.compile(r"[ \t\r\n]+")
MAX_ID = 128
PRIORITIES = ("normal", "high")   # a high task runs before every normal one of its channel
NOT_IN_ID = re.compile(r"[\s/]")   # \s: what str.isspace calls a space
# json.dumps(..., ensure_ascii=False, separators=(",", ":")) without a new encoder each call
COMPACT_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


class BadTask(ValueError):
    """An entry that cannot become a task; ``str()`` is the reason."""


@dataclasses.dataclass(frozen=True)
class Task:
    raw: str            # the entry exactly as it sits in Redis
    id: str
    name: str           # display name, also the distinct key
    channel: str
    argv: tuple[str, ...]
    payload: dict       # the JSON object ({} for a legacy plain string)


@dataclasses.dataclass(frozen=True)
class Policy:
    """How a task runs and what happens when it fails; from its channel, overridden
    per task by the same keys in its payload."""
    timeout: float = 0.0            # seconds, 0 = no limit
    retries: int = 0                # further attempts after a failure
    retry_backoff: float = 1.0      # seconds before the first retry, doubled each time
    retry_max: float = 600.0        # cap of the backoff
    retry_on: tuple[int, ...] = ()  # exit codes worth a retry; empty = any failure
    kill_group: bool = True         # end the command's process group when it exits

    def merge(self, payload: dict) -> Policy:
        given = {k: payload[k] for k in POLICY_LIMITS if payload.get(k) is not None}
        return dataclasses.replace(self, **check_policy(given)) if given else self

    def to_dict(self) -> dict:
        """The fields that differ from the defaults."""
        default = Policy()
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if getattr(self, f.name) != getattr(default, f.name)}


# key -> (type, low, high)
POLICY_LIMITS = {"timeout": (float, 0, 7 * 86400), "retries": (int, 0, 100),
                 "retry_backoff": (float, 0, 86400), "retry_max": (float, 0, 7 * 86400),
                 "retry_on": (tuple, 0, 255), "kill_group": (bool, 0, 1)}
# JSON's booleans (and 1/0, equal to them as keys) or a form's words
BOOLEANS = {True: True, False: False, "true": True, "false": False, "1": True, "0": False}


def check_policy(values: dict) -> dict:
    """Validate policy keys (from JSON, a form or task:channels) -> typed values."""
    out = {}
    for key, value in values.items():
        kind, low, high = POLICY_LIMITS[key]
        try:
            if kind is bool:
                number = BOOLEANS[value.lower() if isinstance(value, str) else value]
                ok = True
            elif kind is tuple:
                items = value if isinstance(value, (list, tuple)) else str(value).split(",")
                number = tuple(sorted({exit_code(v) for v in items if str(v).strip()}))
                ok = all(low <= n <= high for n in number)
            else:
                if isinstance(value, bool):
                    raise ValueError
                number = kind(value)
                ok = low <= number <= high   # False for NaN as well
        except (TypeError, ValueError, KeyError, OverflowError):   # 1e400 is infinity
            ok = False
        if not ok:
            if kind is bool:
                raise BadTask(f"{key} must be true or false")
            raise BadTask(f"{key} must be {'exit codes ' if kind is tuple else ''}"
                          f"between {low} and {high}")
        out[key] = number
    return out


def exit_code(value) -> int:
    """An exit code given as a number (50, or 50.0 as PHP sends a float) or as text."""
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(value)
        return int(value)
    return int(str(value).strip())


def new_id() -> str:
    return uuid4_hex(os.urandom(16))


def uuid4_hex(random: bytes) -> str:
    """``uuid.UUID(bytes=random, version=4).hex`` without the UUID object."""
    octets = bytearray(random)
    octets[6] = octets[6] & 0x0F | 0x40   # version 4
    octets[8] = octets[8] & 0x3F | 0x80   # the RFC 4122 variant
    return octets.hex()


def legacy_id(raw: str) -> str:
    """A stable id for an entry that came without one (left by the Go daemon)."""
    return hashlib.sha1(raw.encode("utf-8", "surrogateescape")).hexdigest()[:32]


def locate(raw: str, default_channel: str = "") -> tuple[str, str]:
    """(channel, task id) of any queue entry, even one that cannot become a task:
    our JSON (``chan``/``id``), later Go's (``channel``/``task_id``), or a plain
    string (the default channel, a derived id)."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        data = None
    if not isinstance(data, dict):
        return default_channel, legacy_id(raw)
    chan = str(data.get("chan") or data.get("channel") or default_channel)
    task_id = str(data.get("id") or data.get("task_id") or legacy_id(raw))
    if "\\u" in raw:   # an escaped lone surrogate cannot name a Redis key
        try:
            chan.encode("utf-8", "surrogateescape")
            task_id.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            return default_channel, legacy_id(raw)
    return chan, task_id


def format_arg(value) -> str:
    """Go formatted JSON numbers in args as plain numbers: 7 -> "7"."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, str):
        return value
    raise BadTask(f"command.args holds a {type(value).__name__}, not a string or number")


def split_line(line: str) -> tuple[str, ...]:
    """A command line as argv, by shell quoting rules (``shlex.split``)."""
    if UNQUOTED.fullmatch(line):
        return tuple(word for word in SHELL_BLANKS.split(line) if word)
    try:
        return tuple(shlex.split(line))
    except ValueError as exc:
        raise BadTask(f"cannot split command line: {exc}") from None


def argv_of(name: str, command) -> tuple[str, ...]:
    """argv from ``command`` (``{"name", "args"}``) or else the command line ``name``."""
    if command is not None:
        if not isinstance(command, dict) or not isinstance(command.get("name"), str) \
                or not command["name"].strip():
            raise BadTask('command must be {"name": "...", "args": [...]}')
        args = command.get("args")
        args = [] if args is None else args
        if not isinstance(args, list):
            raise BadTask("command.args must be a list")
        argv = (command["name"], *(format_arg(a) for a in args))
    else:
        argv = split_line(name)
    if not argv:
        raise BadTask("no command")
    if sum(map(len, argv)) + len(argv) > MAX_COMMAND:
        raise BadTask(f"command longer than {MAX_COMMAND} characters")
    if "\0" in "".join(argv):
        raise BadTask("command contains a NUL byte")
    return argv


def build(channel: str, name: str = "", command=None, task_id: str = "",
          execute_at: float | None = None, extra: dict | None = None) -> Task:
    """A new task payload for a channel queue (producer JSON and HTTP pushes)."""
    if not isinstance(name, str):
        raise BadTask("task must be a string")
    if not name.strip() and command is None:
        raise BadTask("no command: give task or command")
    argv = argv_of(name, command)
    if not name.strip():
        name = shlex.join(argv)
    if task_id in (None, ""):
        task_id = new_id()
    else:
        task_id = str(task_id)
        if len(task_id) > MAX_ID or not task_id.isprintable() or NOT_IN_ID.search(task_id):
            raise BadTask(f"id must be at most {MAX_ID} printable characters, "
                          "without spaces or '/'")
    payload = dict(extra) if extra else {}
    if payload:
        payload.update(check_policy({k: v for k, v in payload.items()
                                     if k in POLICY_LIMITS and v is not None}))
        if payload.get("priority") in (None, "", "normal"):
            payload.pop("priority", None)
        elif payload["priority"] not in PRIORITIES:
            raise BadTask(f"priority must be {' or '.join(PRIORITIES)}")
    payload.update(id=task_id, task=name, chan=channel)
    payload.setdefault("ts", int(time.time()))
    if command is not None:
        payload["command"] = {"name": argv[0], "args": list(argv[1:])}
    else:
        payload["argv"] = list(argv)   # split once here, not again at each claim
    if execute_at:
        payload["execute_at"] = execute_at
    return Task(COMPACT_JSON.encode(payload), task_id, name, channel, argv, payload)


def high(raw: str) -> bool:
    """Whether a queue entry is of high priority (a plain string never is)."""
    if '"priority"' not in raw:
        return False
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        return False
    return isinstance(data, dict) and data.get("priority") == "high"


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def parse_json(text: str | bytes):
    """Strict JSON: NaN and Infinity (which Python accepts) are refused, and so are
    nesting deeper than Python's recursion allows and escapes of lone surrogates."""
    try:
        data = json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise BadTask("JSON nested too deeply") from None
    except ValueError:
        raise BadTask("not valid JSON") from None
    check_unicode(data, text)
    return data


def check_unicode(data, text: str | bytes) -> None:
    """BadTask if a string of ``data`` (parsed from ``text``) cannot be written back as
    UTF-8: a ``\\ud800`` escape that JavaScript's JSON.stringify makes of a broken string.
    Surrogate escapes of bytes that were not UTF-8 (``\\udc80``-``\\udcff``) round-trip."""
    if (b"\\u" if isinstance(text, bytes) else "\\u") not in text:
        return   # no escape, no surrogate: the parser read valid UTF-8 (or our own escapes)
    stack = [data]
    while stack:   # no recursion: the data may be nested as deeply as the parser allowed
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            try:
                item.encode("utf-8", "surrogateescape")
            except UnicodeEncodeError as exc:
                bad = item[exc.start]
                raise BadTask(f"text holds a lone surrogate (\\u{ord(bad):04x}), "
                              "which is not Unicode") from None


def from_producer(raw: str, default_channel: str) -> Task:
    """A ``task:prepare:queue`` entry -> Task, or BadTask."""
    data = parse_json(raw)
    if not isinstance(data, dict):
        raise BadTask("not a JSON object")
    channel = data.get("chan") or default_channel
    if not isinstance(channel, str):
        raise BadTask("chan must be a string")
    execute_at = data.get("execute_at")
    if execute_at is not None and (isinstance(execute_at, bool)
                                   or not isinstance(execute_at, (int, float))
                                   or not 0 <= execute_at < 1e11):
        raise BadTask("execute_at must be unix seconds")
    extra = {k: v for k, v in data.items()
             if k not in ("task", "command", "id", "chan", "argv")}
    return build(channel, data.get("task") or "", given_command(data.get("command")),
                 data.get("id") or "", execute_at, extra)


def given_command(command):
    """``command`` unless it is Go's empty placeholder (``{"name": "", "args": null}``,
    which later Go versions wrote into every task)."""
    if isinstance(command, dict) and not command.get("name") and not command.get("args"):
        return None
    return command


def from_queue(raw: str, channel: str) -> Task:
    """A channel-queue entry -> Task: our JSON, the JSON of later Go versions
    (``task_id``/``task_name``), or a Go v1.0-beta plain string."""
    data = None
    if raw.startswith("{"):
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
        except RecursionError:
            raise BadTask("JSON nested too deeply") from None
        check_unicode(data, raw)
    if not isinstance(data, dict):
        # the Go daemon queued bare command lines; their id is derived from the text
        return Task(raw, legacy_id(raw), raw, channel, argv_of(raw, None), {})
    name = data.get("task") or data.get("task_name") or ""
    if not isinstance(name, str):
        raise BadTask("task must be a string")
    argv = data.get("argv")
    if isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv):
        if any("\0" in a for a in argv):   # exec would cut the argument short there
            raise BadTask("command contains a NUL byte")
        argv = tuple(argv)   # split when it was pushed
    else:
        argv = argv_of(name, given_command(data.get("command")))
    return Task(raw, locate(raw)[1], name or shlex.join(argv), channel, argv, data)
