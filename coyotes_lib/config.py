"""Command line -> frozen ``Config``.

The Go daemon used Go's ``flag`` package, so every flag is accepted as
``-name value``, ``-name=value``, ``--name value`` and ``--name=value``, and
booleans as ``-name``, ``-name=true`` or ``-name=false``. ``normalize_argv``
rewrites all of those into docopt's ``--name=value`` before docopt parses the
usage text kept in ``coyotes.py``; ``build_config`` validates the values and
applies the ``-host``/``-password`` precedence rules of the original.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import socket

from . import __version__

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
    "http-idle-timeout": True, "http-max-connections": True,
}
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

    @property
    def http_loopback(self) -> bool:
        return is_loopback(self.http_host)


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


def build_config(opts: dict) -> Config:
    """Validate docopt's dict (keys ``--name``) into a ``Config``."""
    def get(name: str) -> str:
        return opts.get(f"--{name}") or ""

    redis_addr = get("redis-host")
    if redis_addr in ("", DEFAULT_REDIS) and get("host"):
        redis_addr = get("host")  # deprecated -host wins over a defaulted -redis-host
    redis_host, redis_port = _host_port("redis-host", redis_addr or DEFAULT_REDIS)
    http_host, http_port = _host_port("http-addr", get("http-addr"))
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
        node_id = f"{socket.gethostname()}:{http_port}"
    return Config(
        redis_host=redis_host, redis_port=redis_port,
        redis_password=get("redis-password") or get("password"),
        redis_db=_int("redis-db", get("redis-db"), 0, 15),
        http_host=http_host, http_port=http_port,
        pidfile=get("pidfile"),
        concurrent=_int("concurrent", get("concurrent"), 1, 1000),
        task_mode=_bool("task-mode", get("task-mode")),
        colorful_tty=_bool("colorful-tty", get("colorful-tty")),
        channel_default=channel, biz_name=biz,
        log_file=get("log-file"),
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


def parse(argv: list[str], usage: str):
    """argv (without the program name) -> Config; raises UsageError."""
    import docopt

    opts = docopt.docopt(usage, argv=normalize_argv(argv), help=True,
                         version=f"coyotes {__version__}")
    return build_config(opts)
