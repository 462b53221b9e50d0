#!/usr/bin/env python3
"""Coyotes: you give me the command, I run it.

Usage:
  coyotes [options]
  coyotes -h | --help
  coyotes --version
  coyotes push|status|show|logs|cancel|kill|retry|failed|pause|resume|resize|nodes|schedules ...
                               The client: `coyotes push -h` and the like (see
                               docs/CLI.md)

Every flag also works Go-style: -name value, -name=value, --name value;
booleans as -name, -name=true or -name=false.

Options (as in the Go daemon):
  --redis-host=<host:port>     Redis address, port required [default: 127.0.0.1:6379]
  --redis-password=<secret>    Redis password [default: ]
  --redis-db=<n>               Redis database 0-15 [default: 0]
  --host=<host:port>           Deprecated alias of -redis-host, used when -redis-host
                               is left at its default [default: ]
  --password=<secret>          Deprecated alias of -redis-password, used when
                               -redis-password is empty [default: ]
  --http-addr=<host:port>      HTTP API listen address, or unix:/path/to.sock
                               [default: 127.0.0.1:60001]
  --pidfile=<path>             pid file [default: /tmp/coyotes.pid]
  --concurrent=<n>             Workers of channels created without a count (and of
                               default, biz and cron) [default: 5]
  --task-mode=<bool>           false: serve the HTTP API, consume nothing [default: true]
  --colorful-tty=<bool>        Coloured console output and a banner [default: false]
  --channel-default=<name>     Name of the default channel [default: default]
  --biz-name=<name>            Prefix every Redis key with NAME: [default: ]
  --log-file=<path>            Log to this file instead of stderr [default: ]
  --debug=<bool>               Debug logging, HTTP access log [default: false]
  --daemonize=<bool>           Detach from the terminal (not under supervisor or
                               systemd) [default: false]

Every flag can also come from the environment (COYOTES_REDIS_HOST for the
flag -redis-host) or from the TOML file of -config; a flag wins over the
environment, which wins over the file.

Options (new in this version):
  --config=<path>              TOML file of settings (keys are the flags' names)
                               and [schedules.<name>] tables [default: ]
  --redis-url=<url>            Redis as a URL, which wins over -redis-host,
                               -redis-password and -redis-db:
                               redis://[user:password@]host[:port][/db],
                               rediss://... (TLS), unix:///path/redis.sock?db=N
                               [default: ]
  --redis-tls-ca=<path>        CA certificates to check a rediss:// server with
                               (default: the system's) [default: ]
  --redis-tls-cert=<path>      Client certificate for rediss:// [default: ]
  --redis-tls-key=<path>       Its private key [default: ]
  --redis-password-file=<path> A file whose first line is the Redis password; it
                               wins over -redis-password and -redis-url's [default: ]
  --redis-sentinel=<list>      Comma-separated host:port of Redis Sentinels: Redis is
                               the master they name, followed through failovers
                               (-redis-host and -redis-url's host are then unused;
                               the password, user, db and TLS still apply) [default: ]
  --redis-sentinel-master=<name>
                               The master's name in the sentinels [default: mymaster]
  --redis-sentinel-password=<secret>
                               The sentinels' own password, if they require one
                               (better from COYOTES_REDIS_SENTINEL_PASSWORD) [default: ]
  --api-token-file=<path>      API tokens, one a line, each optionally followed by
                               read-only or push; with a token (or one read-write
                               token in COYOTES_API_TOKEN) every route but /health
                               needs Authorization: Bearer <token> [default: ]
  --http-insecure=<bool>       Serve the API beyond loopback without a token
                               (refused otherwise) [default: false]
  --http-socket-mode=<mode>    Mode of the API's unix socket [default: 0660]
  --http-socket-group=<group>  Group of the API's unix socket (default: the
                               daemon's) [default: ]
  --signature-keys=<path>      Keys producers sign pushes with, one "KEY_ID SECRET"
                               a line; a signed push is then checked [default: ]
  --require-signature=<bool>   Refuse unsigned pushes (queue entries go to the
                               dead letters, HTTP pushes get 401) [default: false]
  --signature-max-age=<seconds>
                               How far a signature's timestamp may be from now
                               [default: 300]
  --log-format=<name>          text, or json: one JSON object a line (time, level,
                               message, node, channel, task id) [default: text]
  --grace=<seconds>            On USR2/HUP/INT/TERM, wait this long for running
                               commands, then kill and requeue them; keep it below
                               supervisor's stopwaitsecs [default: 45]
  --node-id=<id>               This node's id in Redis [default: HOSTNAME:HTTP-PORT]
  --node-ttl=<seconds>         Heartbeat lifetime: a node silent this long has its
                               tasks requeued by the others [default: 30]
  --allowed-hosts=<list>       Comma-separated Host names the API answers besides
                               loopback ones ('*' for any) [default: ]
  --max-body=<bytes>           Largest HTTP request body [default: 1048576]
  --result-ttl=<seconds>       How long finished task records are kept [default: 604800]
  --output-tail=<bytes>        Last bytes of stdout and of stderr kept in a task's
                               record [default: 65536]
  --max-redeliveries=<n>       A task whose node died under it more often than this
                               goes to the failed tasks instead [default: 3]
  --kill-grace=<seconds>       Between TERM and KILL when a command is stopped
                               (timeout, cancel, shutdown) [default: 5]
  --runner=<name>              How commands are started: spawn (posix_spawn, fast)
                               or subprocess (gevent.subprocess) [default: spawn]
  --dead-letters-max=<n>       Entries kept in the dead-letter list; the oldest are
                               trimmed (and counted) beyond it [default: 10000]
  --log-output-max=<bytes>     Output of one task written to the log at most (each
                               line cut at 4096 bytes); the rest is counted, and the
                               record keeps its tails [default: 1048576]
  --http-timeout=<seconds>     A request's line and headers must arrive within this
                               time of its first byte (else the connection is
                               closed), its body within this time too (else 408),
                               and each write of its reply be taken within it; a
                               new connection waits this long for its first byte
                               [default: 10]
  --http-idle-timeout=<seconds>
                               A keep-alive connection idle this long between two
                               requests is closed [default: 60]
  --http-max-connections=<n>   Connections served at once (at most a third of the
                               open-file limit); more wait in the listen backlog
                               until one ends [default: 1000]
"""

from gevent import monkey

monkey.patch_all()

import sys

from coyotes_lib import config as configuration
from coyotes_lib import daemon


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in configuration.CLIENT_COMMANDS:   # the client, not the daemon
        from coyotes_lib import client  # here: a daemon does not keep it in memory
        return client.run(argv)
    try:
        config = configuration.parse(argv, __doc__)
    except configuration.UsageError as exc:
        print(f"coyotes: {exc} (see coyotes -h)", file=sys.stderr)
        return 2
    return daemon.run(config)


if __name__ == "__main__":
    sys.exit(main())
