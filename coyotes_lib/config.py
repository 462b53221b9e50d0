"""Command line, environment and config file -> frozen ``Config``.

The Go daemon used Go's ``flag`` package, so every flag is accepted as
``-name value``, ``-name=value``, ``--name value`` and ``--name=value``, and
booleans as ``-name``, ``-name=true`` or ``-name=false``. ``normalize_argv``
rewrites all of those into docopt's ``--name=value`` before docopt parses the
usage text kept in ``coyotes.py``. A flag not given comes from the environment
(``COYOTES_REDIS_HOST`` for ``-redis-host``), else from the TOML file of
``-config`` (its keys are the flags' names; ``[schedules.<name>]`` tables
define schedules), else its default. ``build_config`` validates the values and
applies the ``-host``/``-password`` precedence rules of the original.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import os
import re
import socket
import urllib.parse

from . import __version__
from .signing import Signatures, comment_cut, read_keys

DEFAULT_REDIS = "127.0.0.1:6379"

# name -> takes a value (False: a Go boolean flag)
FLAGS = {
    "redis-host": True, "redis-password": True, "redis-db": True,
    "host": True, "password": True, "http-addr": True, "pidfile": True,
    "concurrent": True, "task-mode": False, "colorful-tty": False,
    "channel-default": True, "biz-name": True, "log-file": True,
    "debug": False, "daemonize": False, "node-id": True, "grace": True,
    "node-ttl": True, "allowed-hosts": True, "max-body": True, "result-ttl": True,
    "output-tail": True, "max-redeliveries": True, "kill-grace": True, "runner": True,
    "dead-letters-max": True, "log-output-max": True, "http-timeout": True,
    "http-idle-timeout": True, "http-max-connections": True, "config": True,
    "redis-url": True, "redis-tls-ca": True, "redis-tls-cert": True, "redis-tls-key": True,
    "redis-sentinel": True, "redis-sentinel-master": True, "redis-sentinel-password": True,
    "redis-password-file": True, "api-token-file": True, "http-insecure": False,
    "http-socket-mode": True, "http-socket-group": True,
    "require-signature": False, "signature-keys": True, "signature-max-age": True,
    "log-format": True,
}
# a read-write API token from the environment; not a flag, so never on a command line
TOKEN_ENV = "COYOTES_API_TOKEN"
# read at start, then taken out of the environment: commands inherit it
SECRET_ENV = (TOKEN_ENV, "COYOTES_REDIS_PASSWORD", "COYOTES_PASSWORD", "COYOTES_REDIS_URL",
              "COYOTES_REDIS_SENTINEL_PASSWORD")
TOKEN = re.compile(r"^[!-~]{16,256}$")   # printable ASCII, no spaces, at least 16
# what a token may do: everything; read (GET, HEAD, OPTIONS); or push tasks and read them
TOKEN_SCOPES = ("read-write", "read-only", "push")
ENV_PREFIX = "COYOTES_"
# a first word that makes coyotes the command-line client (client.py), not the daemon
CLIENT_COMMANDS = ("push", "status", "show", "logs", "cancel", "kill", "retry", "failed",
                   "pause", "resume", "resize", "nodes", "schedules")
_TRUE = {"1", "t", "T", "true", "TRUE", "True"}
_FALSE = {"0", "f", "F", "false", "FALSE", "False"}
CHANNEL_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


class UsageError(Exception):
    """A bad command line: printed as one line, exit status 2."""


@dataclasses.dataclass(frozen=True)
class Config:
    redis_host: str = "127.0.0.1"
    redis_port: int = 6379
    redis_password: str = ""
    redis_db: int = 0
    http_host: str = "127.0.0.1"
    http_port: int = 60001
    pidfile: str = "/tmp/coyotes.pid"
    concurrent: int = 5
    task_mode: bool = True
    colorful_tty: bool = False
    channel_default: str = "default"
    biz_name: str = ""
    log_file: str = ""
    log_format: str = "text"               # or json: one object a line
    debug: bool = False
    daemonize: bool = False
    node_id: str = ""
    grace: float = 45.0
    node_ttl: int = 30
    allowed_hosts: tuple[str, ...] = ()
    max_body: int = 1 << 20
    result_ttl: int = 7 * 86400
    output_tail: int = 64 * 1024
    max_redeliveries: int = 3
    kill_grace: float = 5.0
    runner: str = "spawn"
    dead_letters_max: int = 10_000
    log_output_max: int = 1 << 20
    http_timeout: float = 10.0
    http_idle_timeout: float = 60.0
    http_max_connections: int = 1000
    redis_username: str = ""               # an ACL user (from -redis-url)
    redis_socket: str = ""                 # a unix socket's path (unix:// in -redis-url)
    redis_tls: bool = False                # rediss:// in -redis-url
    redis_tls_ca: str = ""                 # CA certificates to check the server's with
    redis_tls_cert: str = ""               # a client certificate, and its key
    redis_tls_key: str = ""
    redis_sentinels: tuple[tuple[str, int], ...] = ()   # -redis-sentinel: (host, port)s
    redis_sentinel_master: str = "mymaster"
    redis_sentinel_password: str = ""      # the sentinels' own, when they require one
    http_socket: str = ""                  # -http-addr unix:/path: the API's socket
    http_socket_mode: int = 0o660
    http_socket_group: str = ""
    http_insecure: bool = False            # beyond loopback without a token: allowed
    api_token_file: str = ""
    # with any, every route but /health needs one
    api_tokens: tuple[tuple[bytes, str], ...] = ()   # (SHA-256, one of TOKEN_SCOPES)
    warnings: tuple[str, ...] = ()         # said in the log at start
    signatures: Signatures | None = None   # -signature-keys: pushes signed by producers
    config: str = ""                       # the TOML file read, if any
    schedules: tuple[dict, ...] = ()       # the file's [schedules.<name>] tables
    channels: tuple[tuple[str, dict], ...] = ()   # its [channels.<name>] tables

    @property
    def http_loopback(self) -> bool:
        """Only this machine can reach the API (a unix socket counts)."""
        return bool(self.http_socket) or is_loopback(self.http_host)

    @property
    def http_where(self) -> str:
        if self.http_socket:
            return f"unix:{self.http_socket}"
        host = f"[{self.http_host}]" if ":" in self.http_host else self.http_host
        return f"{host}:{self.http_port}"

    @property
    def redis_where(self) -> str:
        """Where Redis is, for the log: never the password."""
        user = f"{self.redis_username}@" if self.redis_username else ""
        if self.redis_sentinels:
            where = ",".join(f"{host}:{port}" for host, port in self.redis_sentinels)
            return f"sentinel://{user}{where}/{self.redis_sentinel_master} db {self.redis_db}"
        if self.redis_socket:
            return f"unix://{user}{self.redis_socket} db {self.redis_db}"
        scheme = "rediss" if self.redis_tls else "redis"
        return f"{scheme}://{user}{self.redis_host}:{self.redis_port} db {self.redis_db}"


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return False


def normalize_argv(argv: list[str]) -> list[str]:
    """Rewrite Go-style flags into ``--name=value`` (help flags kept as is)."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg in ("-h", "-help", "--help", "--version", "-version"):
            out.append({"-help": "--help", "-version": "--version"}.get(arg, arg))
            continue
        if not arg.startswith("-") or arg in ("-", "--"):
            raise UsageError(f"unexpected argument {arg!r} (coyotes takes only flags)")
        name, eq, value = arg.lstrip("-").partition("=")
        if name not in FLAGS or arg.startswith("---"):
            raise UsageError(f"flag provided but not defined: -{name}")
        if not FLAGS[name]:
            value = value if eq else "true"
        elif not eq:
            if i >= len(argv):
                raise UsageError(f"flag needs an argument: -{name}")
            value = argv[i]
            i += 1
        out = [a for a in out if not a.startswith(f"--{name}=")]   # Go: the last one wins
        out.append(f"--{name}={value}")
    return out


def _host_port(flag: str, value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f'invalid value "{value}" for flag -{flag}: expected host:port')
    return host.strip("[]") or "0.0.0.0", int(port)


def _int(flag: str, value: str, low: int, high: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise UsageError(f'invalid value "{value}" for flag -{flag}: not an integer') from None
    if not low <= number <= high:
        raise UsageError(f'invalid value "{value}" for flag -{flag}: must be {low}..{high}')
    return number


def _choice(flag: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise UsageError(f'invalid value "{value}" for flag -{flag}: '
                         f'expected {" or ".join(choices)}')
    return value


def _seconds(flag: str, value: str, positive: bool = False) -> float:
    try:
        number = float(value)
    except ValueError:
        raise UsageError(f'invalid value "{value}" for flag -{flag}: not a number') from None
    if not 0 <= number <= 86400:   # False for NaN too
        raise UsageError(f'invalid value "{value}" for flag -{flag}: must be 0..86400')
    if positive and number == 0:
        raise UsageError(f'invalid value "{value}" for flag -{flag}: must be more than 0')
    return number


def _bool(flag: str, value: str) -> bool:
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise UsageError(f'invalid value "{value}" for flag -{flag}: expected true or false')


def redis_url(url: str) -> dict:
    """``-redis-url`` -> Config fields: redis://[user[:password]@]host[:port][/db],
    rediss://... (TLS), unix://[user[:password]@]/path/to.sock[?db=N]. A message
    shows the URL without its password."""
    parts = urllib.parse.urlsplit(url)
    shown = url.replace(f":{parts.password}@", ":***@") if parts.password else url

    def bad(why: str) -> UsageError:
        return UsageError(f'invalid value "{shown}" for flag -redis-url: {why}')

    if parts.scheme not in ("redis", "rediss", "unix"):
        raise bad("expected redis://, rediss:// or unix://")
    fields = {"redis_username": urllib.parse.unquote(parts.username or ""),
              "redis_password": urllib.parse.unquote(parts.password or ""),
              "redis_tls": parts.scheme == "rediss"}
    query = urllib.parse.parse_qs(parts.query)
    db = query.get("db", [""])[-1] if parts.scheme == "unix" else parts.path.strip("/")
    if db and (not db.isdigit() or not 0 <= int(db) <= 15):
        raise bad("the database must be 0..15")
    fields["redis_db"] = int(db or 0)
    if parts.scheme == "unix":
        if not parts.path.startswith("/"):
            raise bad("expected unix:///absolute/path/to/redis.sock")
        return {**fields, "redis_socket": parts.path}
    try:
        port = parts.port or 6379
    except ValueError:
        raise bad("the port must be 1..65535") from None
    if not parts.hostname:
        raise bad("no host")
    return {**fields, "redis_host": parts.hostname, "redis_port": port}


def build_config(opts: dict) -> Config:
    """Validate docopt's dict (keys ``--name``) into a ``Config``."""
    def get(name: str) -> str:
        return opts.get(f"--{name}") or ""

    redis_addr = get("redis-host")
    if redis_addr in ("", DEFAULT_REDIS) and get("host"):
        redis_addr = get("host")  # deprecated -host wins over a defaulted -redis-host
    redis_host, redis_port = _host_port("redis-host", redis_addr or DEFAULT_REDIS)
    http_socket = ""
    if get("http-addr").startswith("unix:"):
        http_socket, http_host, http_port = get("http-addr")[5:], "", 0
        if not http_socket.startswith("/"):
            raise UsageError(f'invalid value "{get("http-addr")}" for flag -http-addr: '
                             "expected unix:/absolute/path.sock")
    else:
        http_host, http_port = _host_port("http-addr", get("http-addr"))
    try:
        socket_mode = int(get("http-socket-mode"), 8)
    except ValueError:
        socket_mode = -1
    if not 0 <= socket_mode <= 0o777:
        raise UsageError(f'invalid value "{get("http-socket-mode")}" for flag '
                         "-http-socket-mode: expected an octal mode such as 0660")
    group = get("http-socket-group")
    if group:
        import grp
        try:
            grp.getgrgid(int(group)) if group.isdigit() else grp.getgrnam(group)
        except KeyError:
            raise UsageError(f'invalid value "{group}" for flag -http-socket-group: '
                             "no such group") from None
    channel = get("channel-default")
    if not CHANNEL_NAME.match(channel):
        raise UsageError(f'invalid value "{channel}" for flag -channel-default: '
                         "use letters, digits, '_', '-', '.' (at most 64)")
    biz = get("biz-name")
    if biz and not CHANNEL_NAME.match(biz):
        raise UsageError(f'invalid value "{biz}" for flag -biz-name')
    grace = _seconds("grace", get("grace"))
    hosts = tuple(h.strip().lower() for h in get("allowed-hosts").split(",") if h.strip())
    node_id = get("node-id")
    if node_id in ("", "HOSTNAME:HTTP-PORT"):
        node_id = f"{socket.gethostname()}:{http_socket or http_port}"
    redis = {"redis_host": redis_host, "redis_port": redis_port,
             "redis_password": get("redis-password") or get("password"),
             "redis_db": _int("redis-db", get("redis-db"), 0, 15)}
    if get("redis-url"):   # it wins over -redis-host, -redis-password and -redis-db
        redis.update(redis_url(get("redis-url")))
    if get("redis-password-file"):   # and this over any other password
        redis["redis_password"] = read_secret("redis-password-file", get("redis-password-file"))
    sentinels = tuple(_host_port("redis-sentinel", address.strip())
                      for address in get("redis-sentinel").split(",") if address.strip())
    if sentinels and redis.get("redis_socket"):
        raise UsageError("flag -redis-sentinel: a unix:// -redis-url has no master to follow")
    master = get("redis-sentinel-master") or "mymaster"
    if not CHANNEL_NAME.match(master):
        raise UsageError(f'invalid value "{master}" for flag -redis-sentinel-master')
    for flag in ("redis-tls-ca", "redis-tls-cert", "redis-tls-key"):
        if get(flag) and not os.access(get(flag), os.R_OK):
            raise UsageError(f'invalid value "{get(flag)}" for flag -{flag}: '
                             "no such readable file")
    return Config(
        **redis, redis_tls_ca=get("redis-tls-ca"), redis_tls_cert=get("redis-tls-cert"),
        redis_tls_key=get("redis-tls-key"), redis_sentinels=sentinels,
        redis_sentinel_master=master, redis_sentinel_password=get("redis-sentinel-password"),
        http_host=http_host, http_port=http_port, http_socket=http_socket,
        http_socket_mode=socket_mode, http_socket_group=group,
        http_insecure=_bool("http-insecure", get("http-insecure")),
        api_token_file=get("api-token-file"),
        signatures=signatures(get("signature-keys"), _bool("require-signature",
                                                           get("require-signature")),
                              _seconds("signature-max-age", get("signature-max-age"),
                                       positive=True)),
        pidfile=get("pidfile"),
        concurrent=_int("concurrent", get("concurrent"), 1, 1000),
        task_mode=_bool("task-mode", get("task-mode")),
        colorful_tty=_bool("colorful-tty", get("colorful-tty")),
        channel_default=channel, biz_name=biz,
        log_file=get("log-file"),
        log_format=_choice("log-format", get("log-format"), ("text", "json")),
        debug=_bool("debug", get("debug")),
        daemonize=_bool("daemonize", get("daemonize")),
        node_id=node_id, grace=grace,
        node_ttl=_int("node-ttl", get("node-ttl"), 3, 3600),
        allowed_hosts=hosts,
        max_body=_int("max-body", get("max-body"), 1024, 1 << 30),
        result_ttl=_int("result-ttl", get("result-ttl"), 60, 366 * 86400),
        output_tail=_int("output-tail", get("output-tail"), 0, 16 << 20),
        max_redeliveries=_int("max-redeliveries", get("max-redeliveries"), 0, 1000),
        kill_grace=_seconds("kill-grace", get("kill-grace")),
        runner=_choice("runner", get("runner"), ("spawn", "subprocess")),
        dead_letters_max=_int("dead-letters-max", get("dead-letters-max"), 1, 10_000_000),
        log_output_max=_int("log-output-max", get("log-output-max"), 0, 1 << 40),
        http_timeout=_seconds("http-timeout", get("http-timeout"), positive=True),
        http_idle_timeout=_seconds("http-idle-timeout", get("http-idle-timeout"), positive=True),
        http_max_connections=_int("http-max-connections", get("http-max-connections"),
                                  1, 1_000_000),
    )


def signatures(path: str, required: bool, max_age: float) -> Signatures | None:
    if not path:
        if required:
            raise UsageError("flag -require-signature: give the keys with -signature-keys")
        return None
    try:
        keys = read_keys(path)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UsageError(f'invalid value "{path}" for flag -signature-keys: '
                         f"{getattr(exc, 'strerror', None) or exc}") from None
    return Signatures(keys, required, max_age)


def read_secret(flag: str, path: str) -> str:
    """The first line of a secret's file (a trailing newline is not part of it)."""
    try:
        with open(path, encoding="utf-8") as file:
            return file.readline().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f'invalid value "{path}" for flag -{flag}: '
                         f"{getattr(exc, 'strerror', None) or exc}") from None


def read_tokens(path: str) -> tuple[list[tuple[str, str]], list[str]]:
    """-api-token-file: one token a line, then optionally its scope, ``read-only`` or
    ``push`` (``read-write`` by default); a word starting with ``#`` starts a comment.
    -> ([(token, scope)], warnings about the file's mode)."""
    def bad(why: str) -> UsageError:
        return UsageError(f'invalid value "{path}" for flag -api-token-file: {why}')
    try:
        with open(path, encoding="utf-8") as file:
            lines, mode = file.read().splitlines(), os.fstat(file.fileno()).st_mode
    except (OSError, UnicodeDecodeError) as exc:
        raise bad(getattr(exc, "strerror", None) or str(exc)) from None
    tokens = []
    for number, line in enumerate(lines, 1):
        words = comment_cut(line)
        if not words:
            continue
        if len(words) > 2 or (words[1:] and words[1] not in TOKEN_SCOPES):
            raise bad(f"line {number}: expected a token, then read-write, read-only or push")
        if not TOKEN.match(words[0]):
            raise bad(f"line {number}: a token is 16 to 256 printable characters "
                      "without spaces (openssl rand -hex 32 makes one)")
        tokens.append((words[0], words[1] if words[1:] else "read-write"))
    if not tokens:
        raise bad("no token in it")
    if not mode & 0o044:
        return tokens, []
    loose = f"api tokens: {path} can be read by other users (mode {mode & 0o777:o}); chmod 600 it"
    return tokens, [loose]


def token_digest(token: str) -> bytes:
    """What a token is kept and compared as: equal lengths, so a comparison in
    constant time tells nothing of the token's length."""
    return hashlib.sha256(token.encode()).digest()


def env_name(flag: str) -> str:
    """The environment variable of a flag: COYOTES_REDIS_HOST for -redis-host."""
    return ENV_PREFIX + flag.upper().replace("-", "_")


def read_file(path: str) -> tuple[dict[str, str], tuple[dict, ...], tuple]:
    """A TOML config file -> ({flag: value as a flag would give it}, schedules,
    channels)."""
    import tomllib  # here: a daemon started without a file does not keep it in memory
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except OSError as exc:
        raise UsageError(f"config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config file {path}: not valid TOML: {exc}") from None
    values, schedules, channels = {}, [], []
    for key, value in data.items():
        if key in ("schedules", "channels") and isinstance(value, dict):
            for name, fields in value.items():
                if not isinstance(fields, dict):
                    raise UsageError(f"config file {path}: {key}.{name} must be a table")
                if key == "schedules":
                    schedules.append({"name": name, **fields})
                else:
                    channels.append((name, fields))
            continue
        flag = key.replace("_", "-")
        if flag not in FLAGS or flag == "config":
            raise UsageError(f"config file {path}: unknown setting {key!r}")
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            value = ",".join(value)   # allowed-hosts as a list
        elif isinstance(value, int | float | str):
            value = str(value)
        else:
            raise UsageError(f"config file {path}: {key} must be a string, a number or "
                             "a boolean")
        values[flag] = value
    return values, tuple(schedules), tuple(channels)


def secure(config: Config, environ, on_line: set[str], opts: dict) -> Config:
    """The API tokens, and what must be refused or said about secrets and listening."""
    tokens, warnings = read_tokens(config.api_token_file) if config.api_token_file \
        else ([], [])
    if environ.get(TOKEN_ENV):
        if not TOKEN.match(environ[TOKEN_ENV]):
            raise UsageError(f"{TOKEN_ENV}: a token is 16 to 256 printable characters "
                             "without spaces (openssl rand -hex 32 makes one)")
        tokens.append((environ[TOKEN_ENV], "read-write"))
    if not tokens and not config.http_loopback and not config.http_insecure:
        raise UsageError(f"flag -http-addr: {config.http_where} can be reached from other "
                         "machines, and the API runs commands: give it a token "
                         f"(-api-token-file or {TOKEN_ENV}), or -http-insecure to "
                         "allow this anyway")
    on_argv = [flag for flag in ("redis-password", "password", "redis-sentinel-password")
               if flag in on_line and opts[f"--{flag}"]]
    if "redis-url" in on_line and urllib.parse.urlsplit(opts["--redis-url"]).password:
        on_argv.append("redis-url")
    if on_argv:
        warnings.append(f"a Redis password is on the command line (-{', -'.join(on_argv)}), "
                        "where every local user can read it: use -redis-password-file or "
                        "COYOTES_REDIS_PASSWORD (COYOTES_REDIS_URL...) instead")
    return dataclasses.replace(config, api_tokens=tuple(
        (token_digest(token), scope) for token, scope in tokens),
        warnings=tuple(warnings))


def parse(argv: list[str], usage: str, environ=None):
    """argv (without the program name), the environment (``os.environ`` by
    default) and the config file they name -> Config; raises UsageError."""
    import docopt

    environ = os.environ if environ is None else environ
    given = normalize_argv(argv)
    opts = docopt.docopt(usage, argv=given, help=True, version=f"coyotes {__version__}")
    on_line = {arg[2:].partition("=")[0] for arg in given if arg.startswith("--")}
    path = opts["--config"] if "config" in on_line else environ.get(env_name("config"), "")
    from_file, schedules, channels = read_file(path) if path else ({}, (), ())
    source = {}   # flag -> where its value came from, when not from the command line
    for flag in FLAGS:   # flag > environment > file > default
        if flag in on_line:
            continue
        if env_name(flag) in environ:
            opts[f"--{flag}"], source[flag] = environ[env_name(flag)], env_name(flag)
        elif flag in from_file:
            opts[f"--{flag}"], source[flag] = from_file[flag], path
    try:
        config = build_config(opts)
    except UsageError as exc:
        named = re.search(r"for flag -([a-z-]+)", str(exc))
        if named and named[1] in source:
            raise UsageError(f"{exc} (from {source[named[1]]})") from None
        raise
    config = secure(config, environ, on_line, opts)
    if schedules:   # checked now: a bad one stops the start, with the reason
        from .schedules import BadSchedule
        from .schedules import parse as schedule
        for fields in schedules:
            try:
                schedule(fields, config.channel_default, 0.0)
            except BadSchedule as exc:
                raise UsageError(f"config file {path}: schedule {fields['name']}: "
                                 f"{exc}") from None
    if channels:   # likewise, and their program names are looked for on PATH now
        from .model import ChannelSpec
        from .model import from_file as channel_from
        for name, fields in channels:
            if not CHANNEL_NAME.match(name):
                raise UsageError(f"config file {path}: channels.{name}: a channel name is "
                                 "1-64 letters, digits, '_', '-' or '.'")
            try:
                channel_from(name, fields, ChannelSpec(name, False, config.concurrent))
            except ValueError as exc:
                raise UsageError(f"config file {path}: channels.{name}: {exc}") from None
    return dataclasses.replace(config, config=path, schedules=schedules, channels=channels)
