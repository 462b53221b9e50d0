"""Process life: pid file, signals, start-up and the graceful drain.

``run(config)`` is the whole daemon. USR2, HUP, INT and TERM stop claiming
and let running commands finish within ``-grace`` seconds; then what is left
is killed (whole process group) and requeued, the pid file removed, and the
exit status is 0. A second signal cuts the wait short (still requeueing).
Signal handlers only set events; the main greenlet does the work.
"""

from __future__ import annotations

import ctypes
import logging
import os
import resource
import signal
import sys

import gevent
import gevent.event

from . import log as logsetup
from .api import make_app, make_push
from .broker import Broker
from .config import SECRET_ENV, is_ip
from .connection import connect, spare_cap
from .keys import Keys
from .pidfile import PidFile, PidFileError
from .routes import Api
from .scheduler import NodeConflict, Scheduler, insist
from .server import connection_cap, make_server

log = logging.getLogger("coyotes.daemon")

STOP_SIGNALS = (signal.SIGUSR2, signal.SIGHUP, signal.SIGINT, signal.SIGTERM)
TRIM_EVERY = 60.0   # seconds between two malloc_trim calls


def daemonize() -> None:
    """The classic double fork, for ``-daemonize`` (not under supervisor/systemd)."""
    if os.fork():
        os._exit(0)
    os.setsid()
    if os.fork():
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)


def release_memory(stop: gevent.event.Event, every: float = TRIM_EVERY) -> None:
    """Give the memory malloc holds free back to the system: after start-up (imports
    leave some) and then now and then (glibc only)."""
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    while trim is not None:
        trim(0)
        if stop.wait(every):
            return


def exposure(config) -> list[str]:
    """What the log says at every start about who can make this daemon run commands."""
    user = pwd_name(os.geteuid())
    said = []
    if not config.api_tokens:
        if not config.http_loopback:
            said.append(f"http: the API on {config.http_where} has no token (-http-insecure): "
                        f"anyone who can reach it runs commands as {user}")
        elif not config.http_socket:
            said.append(f"http: the API has no token: any local user can run commands as {user} "
                        f"through {config.http_where}; give it one (-api-token-file or "
                        "COYOTES_API_TOKEN) or listen on a unix socket (see docs/SECURITY.md)")
        elif config.http_socket_mode & 0o002:
            said.append(f"http: every local user may write to {config.http_socket} (mode "
                        f"{config.http_socket_mode:o}) and so run commands as {user}")
    if config.signatures is not None and config.signatures.required and not config.api_tokens:
        said.append("signatures are required but the API has no token: its routes that are "
                    "not signed (schedules, retrying failed tasks, channel policies) still "
                    "let whoever reaches it run commands (see docs/SECURITY.md)")
    if os.geteuid() == 0:
        said.append("running as root: commands run as root unless their channel's command "
                    "policy names a user; run Coyotes as a user of its own (see "
                    "docs/SECURITY.md)")
    return said


def pwd_name(uid: int) -> str:
    import pwd
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def raise_fd_limit() -> int:
    """Raise the soft open-file limit to the hard one (systemd's soft default, 1024,
    is low for a server), log the limit, and return it (0: unlimited)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    unlimited = resource.RLIM_INFINITY
    if soft != unlimited and (hard == unlimited or hard > soft):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:   # an unlimited hard limit some systems refuse
            log.warning("file descriptors: limit %d (cannot raise it to the hard limit: %s)",
                        soft, exc)
            return soft
        log.info("file descriptors: limit %s (raised from %d)",
                 "unlimited" if hard == unlimited else hard, soft)
        return 0 if hard == unlimited else hard
    log.info("file descriptors: limit %s", "unlimited" if soft == unlimited else soft)
    return 0 if soft == unlimited else soft


def run(config) -> int:
    """The whole daemon: 0 after a graceful stop, 1 when it cannot start."""
    for name in SECRET_ENV:   # read already; every command would inherit them
        os.environ.pop(name, None)
    if config.daemonize:
        daemonize()
    logsetup.setup(config.colorful_tty, config.debug, config.log_file, config.log_format,
                   config.node_id)
    if config.colorful_tty:
        sys.stderr.write(logsetup.banner(config, colour=not config.log_file))
    log.info("coyotes starting: node %s, redis %s, http %s, task mode %s",
             config.node_id, config.redis_where, config.http_where, config.task_mode)
    for warning in (*config.warnings, *exposure(config)):
        log.warning("%s", warning)
    fd_limit = raise_fd_limit()
    pidfile = PidFile(config.pidfile)
    try:
        pidfile.acquire()
    except (PidFileError, OSError) as exc:
        log.error("%s", exc)
        return 1
    stop, force = gevent.event.Event(), gevent.event.Event()

    def on_signal(signum: int) -> None:
        (force if stop.is_set() else stop).set()

    for sig in STOP_SIGNALS:
        gevent.signal_handler(sig, on_signal, sig)
    gevent.signal_handler(signal.SIGUSR1, lambda: log.info("%s", logsetup.reopen()))
    redis_hosts = [host for host, _ in config.redis_sentinels] or [config.redis_host]
    if ((config.redis_socket or all(map(is_ip, redis_hosts)))
            and (config.http_socket or is_ip(config.http_host))):
        # nothing to look up: addresses resolve in place, at once, instead of in
        # gevent's resolver thread (a thread and its modules, kept for good)
        gevent.config.resolver = "block"
    try:
        return serve(config, fd_limit, stop, force)
    finally:
        pidfile.release()


def serve(config, fd_limit: int, stop: gevent.event.Event, force: gevent.event.Event) -> int:
    """Serve the API and run the channels until ``stop``, then drain."""
    cap = connection_cap(config.http_max_connections, fd_limit)
    if cap < config.http_max_connections:
        log.info("http: at most %d connections at once (a third of the file descriptor "
                 "limit; -http-max-connections is %d)", cap, config.http_max_connections)
    tls = {"ssl_ca_certs": config.redis_tls_ca, "ssl_certfile": config.redis_tls_cert,
           "ssl_keyfile": config.redis_tls_key} if config.redis_tls else None
    client = connect(config.redis_host, config.redis_port, config.redis_password,
                     config.redis_db, username=config.redis_username,
                     socket_path=config.redis_socket, tls=tls,
                     sentinels=config.redis_sentinels, master=config.redis_sentinel_master,
                     sentinel_password=config.redis_sentinel_password)
    broker = Broker(client, Keys(config.biz_name), config.node_id, config.node_ttl,
                    config.result_ttl, config.dead_letters_max, spare_cap(fd_limit))
    scheduler = Scheduler(broker, config, stop)
    defaults_made = gevent.event.Event()   # API only: the default channels exist

    def not_ready() -> str:
        if config.task_mode:
            return scheduler.not_ready()
        return "" if defaults_made.is_set() else "starting: creating the default channels"

    api = Api(broker, config, scheduler.changed if config.task_mode else None, not_ready,
              scheduler.queued if config.task_mode else None,
              scheduler.lives.get if config.task_mode else None)
    try:
        server = make_server(make_app(api), config, cap, make_push(api))
        server.start()
    except OSError as exc:
        log.error("http: cannot listen on %s: %s", config.http_where, exc.strerror or exc)
        return 1
    log.info("http: API listening on %s", f"http://{config.http_where}"
             if not config.http_socket else config.http_where)
    if config.task_mode:
        try:
            scheduler.start()   # waits for redis, with backoff
        except NodeConflict as exc:
            log.error("%s", exc)
            server.stop(timeout=1)
            return 1
        if not stop.is_set():
            log.info("coyotes ready: %d channel(s): %s", len(scheduler.channels),
                     ", ".join(sorted(scheduler.channels)))
    else:
        scheduler.give_up.set()
        gevent.spawn(insist, "start-up", lambda: (scheduler.ensure_default_channels(),
                                                  defaults_made.set()), stop)
        log.info("task mode off: serving the API only, consuming nothing")
    gevent.spawn(release_memory, stop)   # ends with the stop signal
    stop.wait()
    log.info("shutdown: %s; no new tasks are claimed (a second signal kills and requeues "
             "running ones)", "drain asked" if scheduler.drain_asked else "signal received")
    clean = scheduler.drain(config.grace, force) if config.task_mode else True
    server.stop(timeout=1)
    server.forget()
    log.info("coyotes stopped%s", "" if clean else " (unfinished tasks were requeued)")
    return 0
