"""In-process tests of ``coyotes_lib.config``: Go-style flags -> ``Config``.

The usage text is read from ``coyotes.py``'s docstring with ``ast``: importing
the script would monkey-patch the test process.
"""

from __future__ import annotations

import ast
import os
import re
import socket
from pathlib import Path

import needs
import pytest
from conftest import ROOT, SCRIPT

from coyotes_lib import config as configuration
from coyotes_lib.config import Config, UsageError
from coyotes_lib.signing import Signatures

USAGE = ast.get_docstring(ast.parse(SCRIPT.read_text()), clean=False)
TOKENS = Path(__file__).parent / "tokens.example"   # a token file fit for the value cases
SIGNING_KEYS = Path(__file__).parent / "signing-keys.example"
REDIS_PASSWORD = Path(__file__).parent / "redis-password.example"


def parse(*argv: str) -> Config:
    return configuration.parse(list(argv), USAGE, {})


def forms(flag: str, value: str) -> list[list[str]]:
    """The four spellings Go's flag package accepts for a flag with a value."""
    return [[f"-{flag}", value], [f"-{flag}={value}"], [f"--{flag}", value],
            [f"--{flag}={value}"]]


def all_forms(cases):
    return [pytest.param(flag, value, argv, attrs, id=" ".join(argv))
            for flag, value, attrs in cases for argv in forms(flag, value)]


# -- defaults ---------------------------------------------------------------

def test_usage_text_found():
    assert USAGE and "Usage:" in USAGE and "--redis-host=<host:port>" in USAGE


def test_defaults_match_compat_table():
    c = parse()
    assert (c.redis_host, c.redis_port) == ("127.0.0.1", 6379)
    assert c.redis_password == ""
    assert c.redis_db == 0
    assert (c.http_host, c.http_port) == ("127.0.0.1", 60001)
    assert c.pidfile == "/tmp/coyotes.pid"
    assert c.concurrent == 5
    assert c.task_mode is True
    assert c.colorful_tty is False
    assert c.channel_default == "default"
    # later Go flags and our own
    assert c.biz_name == "" and c.log_file == ""
    assert c.debug is False and c.daemonize is False
    assert c.allowed_hosts == ()
    assert c.grace == 45.0 and c.node_ttl == 30 and c.max_body == 1 << 20


def test_defaults_equal_the_dataclass_defaults():
    """The docopt defaults and the Config field defaults must not drift apart."""
    parsed = parse()
    fresh = Config()
    for field in Config.__dataclass_fields__:
        if field != "node_id":
            assert getattr(parsed, field) == getattr(fresh, field), field


def test_http_bounds_defaults():
    c = parse()
    assert (c.http_timeout, c.http_idle_timeout, c.http_max_connections) == (10.0, 60.0, 1000)


def test_http_bounds_in_the_usage_text(capsys):
    with pytest.raises(SystemExit):
        parse("-h")
    out = capsys.readouterr().out
    for flag in ("--http-timeout=<seconds>", "--http-idle-timeout=<seconds>",
                 "--http-max-connections=<n>"):
        assert flag in out


def test_node_id_defaults_to_hostname_and_http_port():
    assert parse().node_id == f"{socket.gethostname()}:60001"
    assert parse("-http-addr", "0.0.0.0:7001", "-http-insecure").node_id == \
        f"{socket.gethostname()}:7001"
    assert parse("-node-id", "HOSTNAME:HTTP-PORT").node_id == f"{socket.gethostname()}:60001"


def test_node_id_explicit():
    assert parse("-node-id", "worker-7").node_id == "worker-7"
    assert parse("--node-id=a:1").node_id == "a:1"


# -- every value flag in its four forms ---------------------------------------

VALUE_CASES = [
    ("config", "/dev/null", {"config": "/dev/null", "schedules": ()}),   # empty TOML
    ("redis-url", "redis://10.0.0.7:6390/2", {"redis_host": "10.0.0.7", "redis_port": 6390,
                                              "redis_db": 2}),
    ("redis-tls-ca", "/dev/null", {"redis_tls_ca": "/dev/null"}),
    ("redis-tls-cert", "/dev/null", {"redis_tls_cert": "/dev/null"}),
    ("redis-tls-key", "/dev/null", {"redis_tls_key": "/dev/null"}),
    ("redis-sentinel", "10.0.0.8:26379,[::1]:26380",
     {"redis_sentinels": (("10.0.0.8", 26379), ("::1", 26380))}),
    ("redis-sentinel-master", "jobs", {"redis_sentinel_master": "jobs"}),
    ("redis-sentinel-password", "sentinel-pw", {"redis_sentinel_password": "sentinel-pw"}),
    ("redis-host", "10.0.0.2:6380", {"redis_host": "10.0.0.2", "redis_port": 6380}),
    ("redis-password", "s3cret", {"redis_password": "s3cret"}),
    ("redis-password-file", str(REDIS_PASSWORD), {"redis_password": "example-redis-password"}),
    ("api-token-file", str(TOKENS), {"api_token_file": str(TOKENS)}),
    ("http-socket-mode", "0600", {"http_socket_mode": 0o600}),
    ("signature-keys", str(SIGNING_KEYS), {"signatures": Signatures(
        (("example-1", b"example-secret-0123456789"),), False, 300.0)}),
    # with no keys, nothing to sign (the age with keys: test_signature_settings)
    ("signature-max-age", "60", {"signatures": None}),
    ("http-socket-group", str(os.getgid()), {"http_socket_group": str(os.getgid())}),
    ("redis-db", "15", {"redis_db": 15}),
    ("host", "10.0.0.3:6381", {"redis_host": "10.0.0.3", "redis_port": 6381}),
    ("password", "old-secret", {"redis_password": "old-secret"}),
    ("http-addr", "127.0.0.2:8080", {"http_host": "127.0.0.2", "http_port": 8080}),
    ("pidfile", "/var/run/coyotes.pid", {"pidfile": "/var/run/coyotes.pid"}),
    ("concurrent", "12", {"concurrent": 12}),
    ("channel-default", "jobs", {"channel_default": "jobs"}),
    ("biz-name", "acme", {"biz_name": "acme"}),
    ("log-file", "/tmp/c.log", {"log_file": "/tmp/c.log"}),
    ("log-format", "json", {"log_format": "json"}),
    ("node-id", "n1", {"node_id": "n1"}),
    ("grace", "7.5", {"grace": 7.5}),
    ("node-ttl", "10", {"node_ttl": 10}),
    ("allowed-hosts", "api.example", {"allowed_hosts": ("api.example",)}),
    ("max-body", "4096", {"max_body": 4096}),
    ("result-ttl", "3600", {"result_ttl": 3600}),
    ("output-tail", "1024", {"output_tail": 1024}),
    ("max-redeliveries", "5", {"max_redeliveries": 5}),
    ("kill-grace", "2.5", {"kill_grace": 2.5}),
    ("runner", "subprocess", {"runner": "subprocess"}),
    ("dead-letters-max", "500", {"dead_letters_max": 500}),
    ("log-output-max", "4096", {"log_output_max": 4096}),
    ("http-timeout", "2.5", {"http_timeout": 2.5}),
    ("http-idle-timeout", "30", {"http_idle_timeout": 30.0}),
    ("http-max-connections", "50", {"http_max_connections": 50}),
]


@pytest.mark.parametrize(("flag", "value", "argv", "attrs"), all_forms(VALUE_CASES))
def test_value_flag_forms(flag, value, argv, attrs):
    c = parse(*argv)
    for name, expected in attrs.items():
        assert getattr(c, name) == expected


def test_every_flag_of_the_usage_is_covered():
    covered = {flag for flag, _, _ in VALUE_CASES} | set(BOOL_FLAGS) | BOOL_FLAGS_PAIRED
    assert covered == set(configuration.FLAGS)


# -- booleans ---------------------------------------------------------------

BOOL_FLAGS = {"task-mode": "task_mode", "colorful-tty": "colorful_tty", "debug": "debug",
              "daemonize": "daemonize", "http-insecure": "http_insecure"}
# not a Config field: a flag that only makes sense with another (tested below)
BOOL_FLAGS_PAIRED = {"require-signature"}


@pytest.mark.parametrize("flag", sorted(BOOL_FLAGS))
@pytest.mark.parametrize(("suffix", "expected"), [
    ("", True), ("=true", True), ("=false", False), ("=0", False), ("=1", True),
    ("=t", True), ("=F", False), ("=TRUE", True), ("=False", False),
])
@pytest.mark.parametrize("dashes", ["-", "--"])
def test_bool_flag_forms(flag, suffix, expected, dashes):
    assert getattr(parse(f"{dashes}{flag}{suffix}"), BOOL_FLAGS[flag]) is expected


def test_task_mode_named_forms():
    assert parse("-task-mode").task_mode is True
    assert parse("-task-mode=false").task_mode is False
    assert parse("-task-mode=0").task_mode is False
    assert parse("-colorful-tty").colorful_tty is True
    assert parse("--colorful-tty=true").colorful_tty is True


def test_bool_flag_does_not_take_the_next_argument():
    """Go: a boolean never consumes the next word; `-task-mode false` leaves a positional."""
    with pytest.raises(UsageError, match="unexpected argument 'false'"):
        parse("-task-mode", "false")
    c = parse("-task-mode", "-concurrent", "3")
    assert c.task_mode is True and c.concurrent == 3


# -- flags mixed, odd values ------------------------------------------------

def test_many_flags_together():
    c = parse("-redis-host", "r.internal:7000", "--redis-password=pw", "-redis-db=3",
              "--http-addr", "127.0.0.1:9000", "-pidfile=/tmp/x.pid", "-concurrent", "2",
              "-task-mode=false", "--colorful-tty", "-channel-default", "main")
    assert (c.redis_host, c.redis_port, c.redis_password, c.redis_db) == \
        ("r.internal", 7000, "pw", 3)
    assert (c.http_host, c.http_port, c.pidfile) == ("127.0.0.1", 9000, "/tmp/x.pid")
    assert (c.concurrent, c.task_mode, c.colorful_tty, c.channel_default) == \
        (2, False, True, "main")


def test_values_with_equals_and_dashes_are_kept_whole():
    assert parse("-redis-password", "a=b=c").redis_password == "a=b=c"
    assert parse("-redis-password=a=b").redis_password == "a=b"
    assert parse("-redis-password", "-starts-with-dash").redis_password == "-starts-with-dash"
    assert parse("-redis-password", "has space").redis_password == "has space"


def test_empty_values():
    assert parse("-redis-password=").redis_password == ""
    c = parse("-redis-host=")
    assert (c.redis_host, c.redis_port) == ("127.0.0.1", 6379)


def test_http_addr_without_host_listens_everywhere():
    c = parse("-http-addr", ":60002", "-http-insecure")
    assert (c.http_host, c.http_port) == ("0.0.0.0", 60002)
    assert not c.http_loopback


def test_ipv6_addresses():
    c = parse("-redis-host", "[::1]:6390", "-http-addr", "[::1]:7000")
    assert (c.redis_host, c.redis_port) == ("::1", 6390)
    assert (c.http_host, c.http_port) == ("::1", 7000)
    assert c.http_loopback


def test_repeated_flag_last_one_wins():
    """Go's flag package lets a later occurrence override an earlier one."""
    assert parse("-concurrent", "3", "-concurrent", "4").concurrent == 4
    assert parse("-task-mode=false", "-task-mode").task_mode is True


# -- -host / -password precedence --------------------------------------------

def test_host_used_when_redis_host_not_given():
    c = parse("-host", "10.1.1.1:6400")
    assert (c.redis_host, c.redis_port) == ("10.1.1.1", 6400)


def test_host_used_when_redis_host_left_at_default():
    c = parse("-redis-host", "127.0.0.1:6379", "-host", "10.1.1.1:6400")
    assert (c.redis_host, c.redis_port) == ("10.1.1.1", 6400)


def test_host_used_when_redis_host_empty():
    c = parse("-redis-host=", "-host", "10.1.1.1:6400")
    assert (c.redis_host, c.redis_port) == ("10.1.1.1", 6400)


@pytest.mark.parametrize("order", ["redis-host first", "host first"])
def test_explicit_redis_host_wins(order):
    pair = [["-redis-host", "10.2.2.2:6500"], ["-host", "10.1.1.1:6400"]]
    argv = pair[0] + pair[1] if order == "redis-host first" else pair[1] + pair[0]
    c = parse(*argv)
    assert (c.redis_host, c.redis_port) == ("10.2.2.2", 6500)


def test_empty_host_keeps_default():
    c = parse("-host=")
    assert (c.redis_host, c.redis_port) == ("127.0.0.1", 6379)


def test_password_used_when_redis_password_empty():
    assert parse("-password", "old").redis_password == "old"
    assert parse("-redis-password=", "-password", "old").redis_password == "old"


def test_explicit_redis_password_wins():
    assert parse("-redis-password", "new", "-password", "old").redis_password == "new"
    assert parse("-password", "old", "-redis-password", "new").redis_password == "new"


def test_seed_readme_command_line():
    c = parse("-redis-host", "127.0.0.1:6379", "-password", "REDIS-PASSWORD")
    assert (c.redis_host, c.redis_port, c.redis_password) == \
        ("127.0.0.1", 6379, "REDIS-PASSWORD")


def test_bad_host_is_reported_even_through_the_alias():
    with pytest.raises(UsageError, match="host:port"):
        parse("-host", "nohostport")


# -- bad values -------------------------------------------------------------

@pytest.mark.parametrize(("argv", "message"), [
    (["-concurrent", "abc"], r'invalid value "abc" for flag -concurrent: not an integer'),
    (["-concurrent", "0"], r'invalid value "0" for flag -concurrent: must be 1\.\.1000'),
    (["-concurrent", "-3"], r'invalid value "-3" for flag -concurrent'),
    (["-concurrent", "1001"], r"must be 1\.\.1000"),
    (["-redis-host", "nohostport"],
     r'invalid value "nohostport" for flag -redis-host: expected host:port'),
    (["-redis-host", "h:99999"], r'invalid value "h:99999" for flag -redis-host'),
    (["-redis-host", "h:0"], r"for flag -redis-host"),
    (["-redis-host", "h:"], r"for flag -redis-host"),
    (["-redis-host", "h:abc"], r"for flag -redis-host"),
    (["-http-addr", "localhost"], r'invalid value "localhost" for flag -http-addr'),
    (["-redis-db", "16"], r'invalid value "16" for flag -redis-db: must be 0\.\.15'),
    (["-redis-db", "-1"], r"for flag -redis-db"),
    (["-redis-db", "one"], r"for flag -redis-db: not an integer"),
    (["-task-mode=maybe"],
     r'invalid value "maybe" for flag -task-mode: expected true or false'),
    (["-colorful-tty=yes"], r"for flag -colorful-tty"),
    (["-grace", "soon"], r"for flag -grace: not a number"),
    (["-grace", "-1"], r"for flag -grace"),
    (["-node-ttl", "1"], r"for flag -node-ttl"),
    (["-max-body", "10"], r"for flag -max-body"),
    (["-result-ttl", "5"], r"for flag -result-ttl"),
    (["-output-tail", "-1"], r"for flag -output-tail"),
    (["-max-redeliveries", "x"], r"for flag -max-redeliveries: not an integer"),
    (["-kill-grace", "nan"], r"for flag -kill-grace"),
    (["-runner", "fork"], r'invalid value "fork" for flag -runner: expected spawn or subprocess'),
    (["-log-format", "xml"], r'invalid value "xml" for flag -log-format: expected text or json'),
    (["-dead-letters-max", "0"], r"for flag -dead-letters-max: must be 1\.\.10000000"),
    (["-log-output-max", "-1"], r"for flag -log-output-max"),
    (["-http-timeout", "0"], r'invalid value "0" for flag -http-timeout: must be more than 0'),
    (["-http-timeout", "-2"], r"for flag -http-timeout: must be 0\.\.86400"),
    (["-http-timeout", "soon"], r"for flag -http-timeout: not a number"),
    (["-http-timeout", "nan"], r"for flag -http-timeout"),
    (["-http-idle-timeout", "0"], r"for flag -http-idle-timeout: must be more than 0"),
    (["-http-idle-timeout", "inf"], r"for flag -http-idle-timeout"),
    (["-http-max-connections", "0"],
     r'invalid value "0" for flag -http-max-connections: must be 1\.\.1000000'),
    (["-http-max-connections", "1.5"], r"for flag -http-max-connections: not an integer"),
    (["-http-max-connections"], r"flag needs an argument: -http-max-connections"),
    (["-bogus"], r"flag provided but not defined: -bogus"),
    (["--bogus=1"], r"flag provided but not defined: -bogus"),
    (["---redis-host", "h:1"], r"flag provided but not defined"),
    (["-redis-host"], r"flag needs an argument: -redis-host"),
    (["-task-mode", "-concurrent"], r"flag needs an argument: -concurrent"),
    (["extra"], r"unexpected argument 'extra'"),
    (["-concurrent", "3", "extra"], r"unexpected argument 'extra'"),
    (["-"], r"unexpected argument '-'"),
])
def test_bad_values_raise_usage_error(argv, message):
    with pytest.raises(UsageError, match=message) as info:
        parse(*argv)
    assert "\n" not in str(info.value)


# -- -channel-default and -biz-name -------------------------------------------

@pytest.mark.parametrize("name", ["default", "jobs", "a", "Q_1.high-prio", "x" * 64])
def test_good_channel_names(name):
    assert parse("-channel-default", name).channel_default == name


@pytest.mark.parametrize("name", ["", "two words", "a:b", "a/b", "x" * 65, "ünï"])
def test_bad_channel_names(name):
    with pytest.raises(UsageError, match="flag -channel-default"):
        parse(f"-channel-default={name}")


@pytest.mark.parametrize("name", ["acme", "shop_2", "a.b-c", "x" * 64])
def test_good_biz_names(name):
    assert parse("-biz-name", name).biz_name == name


def test_empty_biz_name_means_no_prefix():
    assert parse("-biz-name=").biz_name == ""


@pytest.mark.parametrize("name", ["ac me", "acme:", "a*", "x" * 65])
def test_bad_biz_names(name):
    with pytest.raises(UsageError, match="flag -biz-name"):
        parse("-biz-name", name)


# -- -allowed-hosts -------------------------------------------------------------

@pytest.mark.parametrize(("value", "expected"), [
    ("", ()),
    ("api.example.com", ("api.example.com",)),
    ("API.Example.com, b.example ,,", ("api.example.com", "b.example")),
    ("*", ("*",)),
    (" , ", ()),
])
def test_allowed_hosts(value, expected):
    assert parse("-allowed-hosts", value).allowed_hosts == expected


# -- normalize_argv ---------------------------------------------------------

def test_normalize_argv_rewrites_go_forms():
    assert configuration.normalize_argv(
        ["-redis-host", "h:1", "--concurrent=3", "-task-mode", "-debug=false", "-help"]
    ) == ["--redis-host=h:1", "--concurrent=3", "--task-mode=true", "--debug=false", "--help"]


@pytest.mark.parametrize("argv", [["-h"], ["-help"], ["--help"]])
def test_help_exits_zero_with_usage(argv, capsys):
    with pytest.raises(SystemExit) as info:
        parse(*argv)
    assert info.value.code in (None, 0)
    out = capsys.readouterr().out
    assert "127.0.0.1:60001" in out and "/tmp/coyotes.pid" in out


@pytest.mark.parametrize("argv", [["--version"], ["-version"]])
def test_version(argv, capsys):
    with pytest.raises(SystemExit) as info:
        parse(*argv)
    assert info.value.code in (None, 0)
    assert capsys.readouterr().out.strip() == f"coyotes {configuration.__version__}"


# -- environment and config file ---------------------------------------------------

def write(tmp_path, text: str):
    path = tmp_path / "coyotes.toml"
    path.write_text(text)
    return str(path)


def test_a_flag_wins_over_the_environment_which_wins_over_the_file(tmp_path):
    path = write(tmp_path, 'concurrent = 3\nbiz-name = "shop"\ndebug = true\n'
                           'allowed_hosts = ["a.example", "b.example"]\nnode-ttl = 60\n')
    env = {"COYOTES_CONCURRENT": "4", "COYOTES_NODE_TTL": "90", "COYOTES_CONFIG": path}
    c = configuration.parse(["-concurrent", "6"], USAGE, env)
    assert (c.concurrent, c.node_ttl, c.biz_name, c.debug) == (6, 90, "shop", True)
    assert c.allowed_hosts == ("a.example", "b.example") and c.config == path
    c = configuration.parse([], USAGE, env)
    assert c.concurrent == 4   # the environment, then
    c = configuration.parse(["-config", path], USAGE, {})
    assert (c.concurrent, c.node_ttl) == (3, 60)   # the file, then
    assert configuration.parse([], USAGE, {}).concurrent == 5   # the default
    # booleans and a Go-style value from the environment
    c = configuration.parse([], USAGE, {"COYOTES_TASK_MODE": "false",
                                        "COYOTES_REDIS_HOST": "10.0.0.9:6390"})
    assert c.task_mode is False and (c.redis_host, c.redis_port) == ("10.0.0.9", 6390)


@pytest.mark.parametrize(("text", "words"), [
    ("concurency = 3\n", "unknown setting 'concurency'"),
    ("config = 'other.toml'\n", "unknown setting 'config'"),
    ("concurrent = \n", "not valid TOML"),
    ("concurrent = 0\n", "for flag -concurrent: must be 1..1000 (from "),
    ("[redis]\nhost = 'x'\n", "unknown setting 'redis'"),
    ("concurrent = [1, 2]\n", "concurrent must be a string, a number or a boolean"),
    ("[schedules]\nnightly = 3\n", "schedules.nightly must be a table"),
    ("[schedules.nightly]\ncron = '61 * * * *'\ncommand = 'true'\n",
     "schedule nightly: cron"),
    ("[schedules.nightly]\ncron = '* * * * *'\ncommand = 'true'\nevery = 1\n",
     "schedule nightly: unknown field(s): every"),
])
def test_a_bad_config_file_is_refused_with_the_reason(tmp_path, text, words):
    path = write(tmp_path, text)
    with pytest.raises(UsageError) as err:
        configuration.parse(["-config", path], USAGE, {})
    assert words in str(err.value) and path in str(err.value), str(err.value)


def test_a_missing_config_file_and_a_bad_environment_value_name_themselves():
    with pytest.raises(UsageError, match=r"config file /nonexistent\.toml: No such file"):
        configuration.parse(["-config", "/nonexistent.toml"], USAGE, {})
    with pytest.raises(UsageError, match=r"-redis-db: must be 0..15 \(from COYOTES_REDIS_DB\)"):
        configuration.parse([], USAGE, {"COYOTES_REDIS_DB": "16"})


def test_schedules_of_the_config_file(tmp_path):
    path = write(tmp_path, """
channel-default = "main"
[schedules.laravel]
cron = "* * * * *"
command = "php artisan schedule:run"
timeout = 300
[schedules.report]
cron = "30 2 * * *"
timezone = "Asia/Shanghai"
command = "php artisan report:daily"
channel = "biz"
missed = "run_once"
""")
    c = configuration.parse(["-config", path], USAGE, {})
    assert c.channel_default == "main"
    assert [s["name"] for s in c.schedules] == ["laravel", "report"]
    assert c.schedules[0] == {"name": "laravel", "cron": "* * * * *",
                              "command": "php artisan schedule:run", "timeout": 300}


# -- -redis-url ------------------------------------------------------------------

@pytest.mark.parametrize(("url", "attrs"), [
    ("redis://10.0.0.5", {"redis_host": "10.0.0.5", "redis_port": 6379, "redis_db": 0,
                          "redis_password": "", "redis_username": "", "redis_tls": False}),
    ("redis://:s%40cret@10.0.0.5:6380/3", {"redis_host": "10.0.0.5", "redis_port": 6380,
                                           "redis_db": 3, "redis_password": "s@cret"}),
    ("redis://coyotes:pw@redis.internal/2", {"redis_host": "redis.internal",
                                             "redis_username": "coyotes",
                                             "redis_password": "pw", "redis_db": 2}),
    ("rediss://redis.internal:6390", {"redis_tls": True, "redis_port": 6390}),
    ("unix:///run/redis/redis.sock?db=4", {"redis_socket": "/run/redis/redis.sock",
                                           "redis_db": 4}),
    ("unix://worker:pw@/run/redis.sock", {"redis_socket": "/run/redis.sock",
                                          "redis_username": "worker", "redis_password": "pw"}),
])
def test_redis_url_forms(url, attrs):
    c = parse("-redis-url", url, "-redis-host", "1.2.3.4:7000", "-redis-db", "9")
    for attr, value in attrs.items():   # the URL wins over -redis-host and -redis-db
        assert getattr(c, attr) == value, attr
    assert "pw" not in c.redis_where and "cret" not in c.redis_where


@pytest.mark.parametrize(("url", "words"), [
    ("http://h", "expected redis://"), ("redis://h/16", "0..15"), ("redis://h/x", "0..15"),
    ("redis://h:99999", "port"), ("redis://", "no host"), ("unix://relative.sock", "absolute"),
    ("redis://:topsecret@h:99999", "port"),
])
def test_bad_redis_urls_are_refused_without_showing_the_password(url, words):
    with pytest.raises(UsageError) as err:
        parse("-redis-url", url)
    assert words in str(err.value) and "topsecret" not in str(err.value), str(err.value)


def test_sentinels_with_the_urls_user_password_and_db():
    c = parse("-redis-sentinel", " s1:26379, s2:26379 ,", "-redis-url",
              "rediss://coyotes:pw@ignored:1/3", "-redis-sentinel-password", "spw")
    assert c.redis_sentinels == (("s1", 26379), ("s2", 26379))
    assert (c.redis_username, c.redis_password, c.redis_db, c.redis_tls) == \
        ("coyotes", "pw", 3, True)
    assert c.redis_sentinel_master == "mymaster"   # Redis' own example name
    assert c.redis_where == "sentinel://coyotes@s1:26379,s2:26379/mymaster db 3"
    assert "pw" not in c.redis_where


@pytest.mark.parametrize(("argv", "words"), [
    (("-redis-sentinel", "s1"), "expected host:port"),
    (("-redis-sentinel", "s1:26379,s2:0"), "expected host:port"),
    (("-redis-sentinel", "s1:26379", "-redis-url", "unix:///run/redis.sock"), "unix://"),
    (("-redis-sentinel", "s1:26379", "-redis-sentinel-master", "a b"), "-redis-sentinel-master"),
    (("-http-addr", "unix:relative.sock"), "expected unix:/absolute/path.sock"),
    (("-http-socket-mode", "0999"), "expected an octal mode"),
    (("-http-socket-mode", "01777"), "expected an octal mode"),
    (("-http-socket-group", "no-such-group-here"), "no such group"),
])
def test_bad_sentinel_and_socket_settings_are_refused(argv, words):
    with pytest.raises(UsageError) as err:
        parse(*argv)
    assert words in str(err.value), str(err.value)


def test_tls_files_must_be_readable(tmp_path):
    ca = tmp_path / "ca.crt"
    ca.write_text("x")
    c = parse("-redis-url", "rediss://h", "-redis-tls-ca", str(ca))
    assert c.redis_tls and c.redis_tls_ca == str(ca)
    with pytest.raises(UsageError, match="no such readable file"):
        parse("-redis-tls-ca", str(tmp_path / "nope.crt"))


# -- tokens, secrets and where the API listens ----------------------------------------

def tokens_file(tmp_path, text: str, mode: int = 0o600) -> str:
    path = tmp_path / "tokens"
    path.write_text(text)
    path.chmod(mode)
    return str(path)


def test_tokens_from_a_file_and_the_environment_are_kept_as_digests(tmp_path):
    path = tokens_file(tmp_path, "# deploy\n" + "a" * 32 + "\n\n" + "b" * 16 + " read-only  # ci\n"
                       + "c" * 20 + " read-write\n" + "e" * 20 + " push\n")
    c = configuration.parse(["-api-token-file", path], USAGE, {"COYOTES_API_TOKEN": "d" * 40})
    digest = configuration.token_digest
    assert c.api_tokens == ((digest("a" * 32), "read-write"), (digest("b" * 16), "read-only"),
                            (digest("c" * 20), "read-write"), (digest("e" * 20), "push"),
                            (digest("d" * 40), "read-write"))
    assert "a" * 32 not in repr(c) and c.warnings == ()
    # a token from the environment alone is enough to listen beyond loopback
    c = configuration.parse(["-http-addr", "0.0.0.0:7000"], USAGE, {"COYOTES_API_TOKEN": "e" * 16})
    assert len(c.api_tokens) == 1 and not c.http_insecure


@pytest.mark.parametrize(("text", "words"), [
    ("", "no token in it"), ("# nothing\n", "no token in it"),
    ("short\n", "line 1: a token is 16 to 256 printable characters"),
    ("a" * 16 + " admin\n", "line 1: expected a token, then read-write, read-only or push"),
    ("a" * 16 + "\n" + "b" * 16 + " read-only extra\n", "line 2: expected a token"),
])
def test_bad_token_files_are_refused_with_the_line(tmp_path, text, words):
    with pytest.raises(UsageError) as err:
        configuration.parse(["-api-token-file", tokens_file(tmp_path, text)], USAGE, {})
    assert words in str(err.value) and "-api-token-file" in str(err.value), str(err.value)


def test_a_hash_sign_inside_a_token_is_part_of_it(tmp_path):
    path = tokens_file(tmp_path, "abc#def0123456789xyz read-only # for the dashboard\n")
    c = configuration.parse(["-api-token-file", path], USAGE, {})
    assert c.api_tokens == ((configuration.token_digest("abc#def0123456789xyz"), "read-only"),)


def test_token_file_problems_and_a_bad_environment_token(tmp_path):
    with pytest.raises(UsageError, match="No such file"):
        parse("-api-token-file", str(tmp_path / "missing"))
    with pytest.raises(UsageError, match="COYOTES_API_TOKEN: a token is 16 to 256"):
        configuration.parse([], USAGE, {"COYOTES_API_TOKEN": "too short"})
    loose = configuration.parse(["-api-token-file", tokens_file(tmp_path, "a" * 16, 0o644)],
                                USAGE, {})
    said = f"api tokens: {tmp_path / 'tokens'} can be read by other users (mode 644); chmod 600 it"
    assert loose.warnings == (said,)


@pytest.mark.parametrize("addr", ["0.0.0.0:60001", ":60001", "10.1.2.3:60001", "[::]:60001",
                                  "coyotes.example:60001"])
def test_beyond_loopback_without_a_token_is_refused_unless_insecure(addr):
    with pytest.raises(UsageError) as err:
        parse("-http-addr", addr)
    assert "give it a token" in str(err.value) and "-http-insecure" in str(err.value)
    assert parse("-http-addr", addr, "-http-insecure").http_insecure is True


@pytest.mark.parametrize("addr", ["127.0.0.1:60001", "localhost:60001", "[::1]:60001",
                                  "unix:/run/coyotes/api.sock"])
def test_loopback_and_unix_sockets_need_no_token(addr):
    c = parse("-http-addr", addr)
    assert c.http_loopback and not c.api_tokens


def test_a_unix_socket_address():
    c = parse("-http-addr", "unix:/run/coyotes/api.sock", "-http-socket-mode", "660",
              "-http-socket-group", "0")
    assert (c.http_socket, c.http_socket_mode, c.http_socket_group) == \
        ("/run/coyotes/api.sock", 0o660, "0")
    assert c.http_where == "unix:/run/coyotes/api.sock"
    assert c.node_id == f"{socket.gethostname()}:/run/coyotes/api.sock"
    assert parse("-http-addr", "[::1]:7000").http_where == "[::1]:7000"


def test_the_redis_password_from_a_file_and_warnings_for_one_on_the_command_line(tmp_path):
    secret = tmp_path / "redis-password"
    secret.write_text("from-the-file\n")
    c = parse("-redis-password-file", str(secret), "-redis-url", "redis://h:1/2")
    assert c.redis_password == "from-the-file" and c.warnings == ()
    c = configuration.parse([], USAGE, {"COYOTES_REDIS_PASSWORD_FILE": str(secret)})
    assert c.redis_password == "from-the-file"
    with pytest.raises(UsageError, match="-redis-password-file: No such file"):
        parse("-redis-password-file", str(tmp_path / "missing"))

    def warned(*argv, environ=None) -> str:
        return " ".join(configuration.parse(list(argv), USAGE, environ or {}).warnings)
    assert "(-redis-password)" in warned("-redis-password", "pw")
    assert "(-password)" in warned("-password", "pw")
    assert "(-redis-url)" in warned("-redis-url", "redis://:pw@h")
    assert "(-redis-sentinel-password)" in warned("-redis-sentinel-password", "pw")
    assert "pw" not in warned("-redis-password", "pw").replace("password", "")
    # from the environment or without a password: nothing to say
    assert warned(environ={"COYOTES_REDIS_PASSWORD": "pw"}) == ""
    assert warned("-redis-url", "redis://h", "-redis-password", "") == ""


# -- channels of the config file --------------------------------------------------------

def test_channels_of_the_config_file_are_checked_when_it_is_read(tmp_path):
    path = write(tmp_path, '[channels.reports]\nworker = 2\ndistinct = true\ntimeout = 60\n'
                           '[channels.reports.command_policy]\nallow = ["true", "sleep *"]\n'
                           'env = ["PATH"]\nlimits = { nofile = 256 }\n')
    c = configuration.parse(["-config", path], USAGE, {})
    assert c.channels == (("reports", {"worker": 2, "distinct": True, "timeout": 60,
                                       "command_policy": {"allow": ["true", "sleep *"],
                                                          "env": ["PATH"],
                                                          "limits": {"nofile": 256}}}),)


@pytest.mark.parametrize(("text", "words"), [
    ("[channels.x]\nworkers = 2\n", "channels.x: unknown setting(s) workers"),
    ("[channels.x]\nworker = 0\n", "channels.x: worker must be an integer 1..1000"),
    ("[channels.x]\ndistinct = 'yes'\n", "distinct must be true or false"),
    ("[channels.x]\ntimeout = -1\n", "timeout must be between"),
    ("[channels.x.command_policy]\nallow = ['no-such-program-here']\n", "is not an executable"),
    ("[channels.'a b']\nworker = 1\n", "a channel name is"),
    ("channels = 3\n", "unknown setting 'channels'"),
])
def test_bad_channels_in_the_config_file_stop_the_start(tmp_path, text, words):
    path = write(tmp_path, text)
    with pytest.raises(UsageError) as err:
        configuration.parse(["-config", path], USAGE, {})
    assert words in str(err.value) and path in str(err.value), str(err.value)


def test_the_config_file_example_of_the_docs_is_read(tmp_path):
    needs.program("php", "php-cli")   # its channel's policy names php
    text = (ROOT / "docs" / "DEPLOYMENT.md").read_text()
    example = re.search(r"```toml\n(# /etc/coyotes.toml\n.*?)```", text, re.S)[1]
    path = write(tmp_path, example.replace("/var/www/app", str(tmp_path)))
    c = configuration.parse(["-config", path], USAGE, {})
    assert c.concurrent == 10 and [s["name"] for s in c.schedules] == ["laravel"]
    assert [name for name, _ in c.channels] == ["reports"]


# -- signed producers ----------------------------------------------------------------

def test_signature_settings(tmp_path):
    c = parse("-signature-keys", str(SIGNING_KEYS), "-require-signature",
              "-signature-max-age", "30")
    assert c.signatures == Signatures((("example-1", b"example-secret-0123456789"),), True, 30.0)
    assert "example-secret" not in repr(c)
    with pytest.raises(UsageError, match="-require-signature: give the keys"):
        parse("-require-signature")
    for text, words in (("k1 short\n", "line 1: expected KEY_ID SECRET"),
                        (f"k1 {'s' * 16}\nk1 {'t' * 16}\n", "line 2: key 'k1' given twice"),
                        ("# none\n", "no key in it"), ("bad/id " + "s" * 16, "line 1")):
        keys = tmp_path / "keys"
        keys.write_text(text)
        with pytest.raises(UsageError) as err:
            parse("-signature-keys", str(keys))
        assert words in str(err.value) and "-signature-keys" in str(err.value), str(err.value)
