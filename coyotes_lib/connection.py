"""Redis connections, and the lean round trip the per-task path takes.

``connect`` makes the client every part of the daemon uses: no silent retries,
surrogate escapes for bytes that are not UTF-8, a socket timeout longer than
any blocking call. ``Lean`` sends commands and script calls on connections of
its own, several in one round trip, and is what ``broker.py`` calls its Lua
scripts through. What Coyotes does with Redis is in ``broker.py``.
"""

from __future__ import annotations

import os
import select
import time
import weakref

import gevent
import gevent.event
import redis
import redis.sentinel
from gevent.monkey import get_original
from redis.backoff import NoBackoff
from redis.connection import HIREDIS_AVAILABLE, Encoder, HiredisRespSerializer, PythonRespSerializer
from redis.exceptions import NoScriptError
from redis.retry import Retry

if HIREDIS_AVAILABLE:
    import hiredis
    from redis._parsers import hiredis as hiredis_parser

BLOCK = 1            # seconds a blocking move waits, so the stop flag is seen quickly
# bytes a connection reads at a time; its parser keeps a buffer this size for good
# (replies here are mostly under 1 KiB; redis-py's default is 64 KiB)
READ_SIZE = 16 * 1024
MAX_CONNECTIONS = 100_000
RAW_POLL = get_original("select", "poll")


class Packer:
    """hiredis packs commands fast but encodes text strictly as UTF-8; an argument
    holding surrogate escapes (bytes that were not UTF-8) falls back to redis-py's
    own packer, which honours ``encoding_errors``. A one-word command of str, bytes
    and numbers (every command on the per-task path) goes to hiredis as it is:
    redis-py's wrapper first rebuilds the arguments in a generator, which cost
    more than the packing itself."""

    def __init__(self):
        self.fast = HiredisRespSerializer() if HIREDIS_AVAILABLE else None
        self.safe = PythonRespSerializer(6000, Encoder("utf-8", "surrogateescape",
                                                       True).encode)

    def pack(self, *args):
        if self.fast is not None:
            try:
                try:
                    if " " not in args[0]:
                        return [hiredis.pack_command(args)]
                except TypeError:   # a bytes name, a bytearray or memoryview argument
                    # (which redis-py's hiredis packer refuses before 8.0)
                    args = tuple(bytes(arg) if isinstance(arg, (bytearray, memoryview))
                                 else arg for arg in args)
                return self.fast.pack(*args)
            except UnicodeEncodeError:
                pass
        return self.safe.pack(*args)


def spare_cap(fd_limit: int) -> int:
    """Idle connections the lean path keeps: an eighth of the descriptor limit (0 =
    unlimited), so that a burst of concurrent calls cannot keep holding the
    descriptors that commands' pipes need."""
    return max(4, fd_limit // 8) if fd_limit else MAX_CONNECTIONS


class Quick:
    """redis-py checks each connection it takes from the pool for unread data
    with ``select.poll`` and a zero timeout. Under gevent's patching that poll
    waits for a turn of the hub (a loop iteration and a timer) before it answers,
    once per command. The unpatched poll
    answers at once; when it sees something (data, or a closed socket) redis-py's
    own check decides. Mixed into each kind of connection (TCP, TLS, unix)."""

    def __init__(self, *args, **kwargs):
        try:
            super().__init__(*args, **kwargs)
        except OSError as exc:   # out of descriptors (redis-py reads a file here): an outage
            raise redis.ConnectionError(f"cannot make a connection: {exc}") from exc

    def can_read(self, timeout: float = 0) -> bool:
        sock = self._sock
        if timeout or sock is None:
            return super().can_read(timeout)
        poller = RAW_POLL()
        poller.register(sock, select.POLLIN)
        if poller.poll(0):
            return super().can_read(timeout)
        reader = getattr(self._parser, "_reader", None)   # hiredis: a reply read, not taken
        return bool(reader is not None and reader.has_data())

    def send_packed(self, chunks: list[bytes]) -> None:
        """``send_packed_command`` without gevent's ``sendall`` (a ``getsockopt`` and
        a loop in Python per call): one ``send`` takes the usual few hundred bytes."""
        if self._sock is None:
            self.connect_check_health(check_health=False)
        self.check_health()
        sock = self._sock
        try:
            for chunk in chunks:
                sent = sock.send(chunk)
                if sent < len(chunk):
                    sock.sendall(memoryview(chunk)[sent:])
        except BaseException as exc:
            raise self._failed(exc, "writing to") from None

    def replies(self, count: int) -> list:
        """The next ``count`` replies, each error reply (an exception) in its place:
        ``read_response`` for each, without its layers per reply when hiredis parses
        (what is left is reading the socket and ``gets``)."""
        parser = self._parser
        reader = getattr(parser, "_reader", None)
        if reader is None or parser._next_response is not hiredis_parser.NOT_ENOUGH_DATA:
            out = []
            for _ in range(count):
                try:
                    out.append(self.read_response())
                except redis.ResponseError as exc:
                    out.append(exc)
            return out
        out, missing = [], hiredis_parser.NOT_ENOUGH_DATA
        try:
            while len(out) < count:
                reply = reader.gets()
                if reply is missing:
                    parser.read_from_socket()   # raises redis-py's own errors
                    continue
                if isinstance(reply, redis.ConnectionError):
                    raise reply
                out.append(reply)
        except BaseException as exc:
            raise self._failed(exc, "reading from") from None
        if self.health_check_interval:   # as read_response does: no PING before the next
            self.next_health_check = time.monotonic() + self.health_check_interval
        return out

    def _failed(self, exc: BaseException, doing: str) -> BaseException:
        """The connection closed (after any error, a greenlet killed midway included,
        it is unusable) -> what to raise: redis-py's error for a socket's."""
        self.disconnect()
        if isinstance(exc, TimeoutError):
            return redis.TimeoutError(f"Timeout {doing} socket")
        if isinstance(exc, OSError):
            return redis.ConnectionError(f"Error while {doing} socket: {exc}")
        return exc

    def fresh(self) -> None:
        """Ready to send: closed (to reconnect at the next send) if there is something
        to read, which on an idle connection means the server closed it (Redis
        restarted) or a reply was left unread."""
        try:
            stale = self._sock is not None and self.can_read()
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            stale = True
        if stale:
            self.disconnect()


class Connection(Quick, redis.Connection):
    """TCP."""


class TLSConnection(Quick, redis.SSLConnection):
    """TLS (rediss://)."""


class UnixConnection(Quick, redis.UnixDomainSocketConnection):
    """A unix socket (unix://)."""


class Followed(Quick):
    """A connection to the master the sentinels name, asked again at each (re)connection;
    a READONLY reply (a demoted master) closes it, so the next use finds the new one.
    redis-py's sentinel connection asks only in ``connect``, but its first send on a
    connection never connected (and a send after a disconnection) goes straight to
    ``connect_check_health``, to the default localhost:6379 or the old master."""

    def connect(self) -> None:
        self.connect_check_health(check_health=self.connection_pool.check_connection)

    def connect_check_health(self, check_health: bool = True,
                             retry_socket_connect: bool = True) -> None:
        if self._sock is None:
            self.host, self.port = self.connection_pool.get_master_address()
        super().connect_check_health(check_health=check_health, retry_socket_connect=False)


class SentinelConnection(Followed, redis.sentinel.SentinelManagedConnection):
    """TCP to the master the sentinels name."""


class SentinelTLSConnection(Followed, redis.sentinel.SentinelManagedSSLConnection):
    """TLS to the master the sentinels name."""


def connect(host: str, port: int, password: str = "", db: int = 0, *, username: str = "",
            socket_path: str = "", tls: dict | None = None,
            sentinels: tuple = (), master: str = "", sentinel_password: str = "") -> redis.Redis:
    """A client whose socket timeout outlasts every blocking call we make.

    redis-py's own silent retries are turned off: resending a move whose reply
    was lost is not idempotent, so every caller handles the error itself (and
    a claim loop reconciles its processing list after an outage). Bytes that
    are not UTF-8 (a GBK command line left by an old producer) decode with
    surrogate escapes, so they round-trip to Redis and to argv unchanged.
    ``socket_path``: a unix socket instead of host and port; ``tls``: TLS, with
    ``ssl_ca_certs``, ``ssl_certfile`` and ``ssl_keyfile`` as given; ``sentinels``
    (``(host, port)`` pairs): the master named ``master`` wherever they say it is,
    instead of host and port."""
    where: dict = {"host": host, "port": port, "socket_keepalive": True,
                   "connection_class": Connection}
    if socket_path:
        where = {"path": socket_path, "connection_class": UnixConnection}
    elif tls is not None:
        where.update(connection_class=TLSConnection,
                     **{key: value for key, value in tls.items() if value})
    settings = dict(
        username=username or None, password=password or None, db=db,
        decode_responses=True, encoding_errors="surrogateescape",
        socket_timeout=BLOCK + 9, socket_connect_timeout=3,
        health_check_interval=30, retry=Retry(NoBackoff(), 0), command_packer=Packer(),
        socket_read_size=READ_SIZE,
        # workers and API requests may each hold one at a time: no small cap such as
        # redis-py's default of 100
        max_connections=MAX_CONNECTIONS)
    if sentinels:
        del where["host"], where["port"]
        where["connection_class"] = SentinelTLSConnection if tls is not None else SentinelConnection
        # a sentinel that does not answer within a second is skipped for the next one
        manager = redis.sentinel.Sentinel(
            sentinels, sentinel_kwargs={"password": sentinel_password or None,
                                        "socket_timeout": 1, "socket_connect_timeout": 1,
                                        "decode_responses": True})
        pool = redis.sentinel.SentinelConnectionPool(master, manager, **settings, **where)
    else:
        pool = redis.ConnectionPool(**settings, **where)
    return redis.Redis(connection_pool=pool)


class Script:
    """A registered script: ``script(keys, args)`` is one round trip on the lean path
    (``Lean.pipelined``, cheaper than redis-py's own call), which also takes it in
    ``(script, keys, args)`` calls sent together."""

    def __init__(self, lean: Lean, registered):
        # redis-py's own call, which loads the script when Redis lost it
        self.lean, self.registered = lean, registered
        self.text, self.sha = registered.script, registered.sha

    def __call__(self, keys=(), args=()):
        return self.lean.pipelined([(self, keys, args)])[0]


class Lean:
    """Round trips on connections of our own: the per-task path, without the pool's
    checks, locks and metrics on each take and return. Script calls made by
    several greenlets within one turn of the loop (concurrent pushes, workers
    finishing together) share one round trip: a group commit, since waiting for
    a reply costs a greenlet more than building the call."""

    def __init__(self, client: redis.Redis, spare_max: int = MAX_CONNECTIONS):
        self.redis = client
        # connections between two uses; made by the pool, with its settings, but not
        # handed back to it (see ``round_trip``)
        self.spare: list[Connection] = []
        self.spare_max = spare_max   # more are closed after use: they would hold descriptors
        self.scripts: list[Script] = []
        self.group: list[tuple[list, gevent.event.AsyncResult]] = []   # the next round trip
        self.flying = 0   # round trips under way
        # a forked child must not share them (redis-py's pool resets itself likewise);
        # dropping a connection closes only the child's copy of its socket
        lean = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: (ln := lean()) and ln.spare.clear())

    def script(self, text: str) -> Script:
        script = Script(self, self.redis.register_script(text))
        self.scripts.append(script)
        return script

    def load_scripts(self) -> None:
        """Load every script now: a pipelined call finds it there (one that does not,
        after Redis restarted, is run again by itself, or takes the slower path)."""
        with self.redis.pipeline(transaction=False) as pipe:
            for script in self.scripts:
                pipe.script_load(script.text)
            pipe.execute()

    def pipelined(self, calls, errors: bool = False, first: tuple = ()) -> list:
        """Script calls, ``(script, keys, args)``, in one round trip, after the plain
        command ``first`` if given (its reply comes first). A call with ``first``
        (a blocking one) goes alone, never in a group. redis-py's own pipelined
        scripts ask SCRIPT EXISTS first, a round trip more each time; here a NOSCRIPT
        reply (Redis restarted) loads the script and runs that call again: it had
        done nothing. An error reply is raised, or with ``errors`` left in its place
        (every script checks before it writes, so a refused call changed nothing)."""
        commands = [first] if first else []
        commands += [("EVALSHA", script.sha, len(keys), *keys, *args)
                     for script, keys, args in calls]
        if not commands:
            return []
        replies = self.round_trip(commands) if first else self.grouped(commands)
        skip = 1 if first else 0
        for i, reply in enumerate(replies):
            if isinstance(reply, NoScriptError) and i >= skip:
                script, keys, args = calls[i - skip]
                try:
                    replies[i] = script.registered(keys=keys, args=args)
                except redis.ResponseError as exc:
                    if not errors:
                        raise
                    replies[i] = exc
            elif isinstance(reply, Exception) and not (errors and i >= skip):
                raise reply
        return replies

    def grouped(self, commands: list[tuple]) -> list:
        """``round_trip`` in the next group: the commands of every caller that comes
        before the loop's next turn go together, each caller's in a row and in
        order, and each gets its own replies (or the error that ended the trip).
        A caller alone (no trip under way, none waiting) goes at once: an idle
        daemon's task does not wait for a turn of the loop."""
        if not self.flying and not self.group:
            self.flying += 1
            try:
                return self.round_trip(commands)
            finally:
                self.flying -= 1
        waiter = gevent.event.AsyncResult()
        if not self.group:
            gevent.spawn(self._send_group)
        self.group.append((commands, waiter))
        return waiter.get()

    def _send_group(self) -> None:
        group, self.group = self.group, []
        self.flying += 1
        try:
            replies = self.round_trip([c for commands, _ in group for c in commands])
        except BaseException as exc:
            for _, waiter in group:
                waiter.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        finally:
            self.flying -= 1
        start = 0
        for commands, waiter in group:
            waiter.set(replies[start:start + len(commands)])
            start += len(commands)

    def round_trip(self, commands: list[tuple]) -> list:
        """Send commands together on one connection and read every reply (an error
        reply in its place): what a redis-py pipeline does, without its command
        stack, callbacks and reset.
        The connection comes from a list of our own rather than from the pool, whose
        checks, locks and metrics cost time on each take and return: a connection
        goes back to that list only with
        every reply read, or closed (an error, or a greenlet killed mid-reply), so
        the one check it needs when taken again is for a server that closed it.
        A forked child drops the list (see ``__init__``)."""
        spare = self.spare
        conn = spare.pop() if spare else self.redis.connection_pool.make_connection()
        try:
            conn.fresh()   # it may yield (a closed socket): a kill there still puts it back
            conn.send_packed(conn.pack_commands(commands))
            replies = conn.replies(len(commands))
        except BaseException:
            conn.disconnect()
            raise
        finally:
            if len(spare) < self.spare_max:
                spare.append(conn)
            else:
                conn.disconnect()
        return replies


class Subscriber:
    """One pub/sub subscription on a connection of its own. ``messages(wait)`` gives
    what arrived within ``wait`` seconds; a silent connection is pinged, and one
    that stays silent is an error (a server gone without closing the socket)."""

    def __init__(self, client: redis.Redis, channel: str, ping_every: float = 5.0):
        self.conn = client.connection_pool.make_connection()
        self.ping_every = ping_every
        self.heard = time.monotonic()
        self.conn.send_command("SUBSCRIBE", channel)
        self.conn.read_response(push_request=True)   # the subscription's confirmation

    def messages(self, wait: float) -> list[str]:
        conn, out = self.conn, []
        if conn.can_read(wait):
            while True:
                # RESP3 push ['message', channel, data], or the reply to a PING
                reply = conn.read_response(push_request=True)
                if isinstance(reply, list) and len(reply) == 3 and reply[0] == "message":
                    out.append(reply[2])
                if not conn.can_read():
                    break
            self.heard = time.monotonic()
        elif time.monotonic() - self.heard > 3 * self.ping_every:
            raise redis.TimeoutError("no reply to PING on the wake-up subscription")
        elif time.monotonic() - self.heard > self.ping_every:
            conn.send_command("PING")
        return out

    def close(self) -> None:
        self.conn.disconnect()
