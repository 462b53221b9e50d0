"""-redis-url against real redis-servers: a unix socket with an ACL user, and
TLS with the server checked against a CA and a client certificate (keys made
by openssl in the test). The daemon runs tasks through each, and its log never
shows the password.
"""

from __future__ import annotations

import subprocess
import time

import pytest
import redis
from conftest import ended, free_port, ledger_command, ok_data, stop_process, wait_until

PASSWORD = "s3cret-pw"


def redis_server(tmp_path, *args) -> subprocess.Popen:
    proc = subprocess.Popen(["redis-server", "--save", "", "--appendonly", "no",
                             "--dir", str(tmp_path), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    return proc


def answers(client: redis.Redis) -> bool:
    try:
        return client.ping()
    except redis.ConnectionError:
        return False


def run_a_task(coyotes_factory, tmp_path, url: str, *more) -> str:
    ledger = tmp_path / "ledger"
    daemon = coyotes_factory("-redis-url", url, *more)
    ok_data(daemon.request("POST", "/channels/default/tasks",
                           {"task": ledger_command(ledger, "t")}))
    wait_until(lambda: ended(ledger, "t"), what="a task through this Redis")
    log = daemon.log()
    assert PASSWORD not in log
    assert PASSWORD not in str(daemon.request("GET", "/nodes")) + str(daemon.request("GET", "/"))
    return log


def test_a_unix_socket_and_an_acl_user(coyotes_factory, tmp_path):
    sock = tmp_path / "redis.sock"
    server = redis_server(tmp_path, "--port", "0", "--unixsocket", str(sock),
                          "--user", "default", "off",
                          "--user", "coyotes", "on", f">{PASSWORD}", "~*", "&*", "+@all")
    try:
        def refuses_anonymous() -> bool:
            try:
                redis.Redis(unix_socket_path=str(sock)).ping()
            except redis.AuthenticationError:
                return True
            except redis.ConnectionError:   # not listening yet
                return False
            raise AssertionError("an anonymous client was let in")
        wait_until(refuses_anonymous, what="redis-server on its socket, without anonymity")
        log = run_a_task(coyotes_factory, tmp_path, f"unix://coyotes:{PASSWORD}@{sock}?db=3")
        assert f"redis unix://coyotes@{sock} db 3" in log
        client = redis.Redis(unix_socket_path=str(sock), username="coyotes",
                             password=PASSWORD, db=3, decode_responses=True)
        assert client.hexists("task:channels", "default")   # in database 3
    finally:
        stop_process(server)


def test_tls_with_a_ca_and_a_client_certificate(coyotes_factory, tmp_path):
    def openssl(*args):
        subprocess.run(["openssl", *args], cwd=tmp_path, check=True, capture_output=True)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
            "ca.crt", "-days", "2", "-subj", "/CN=coyotes-test-ca")
    for name, cn in (("server", "localhost"), ("client", "coyotes")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
                f"{name}.csr", "-subj", f"/CN={cn}",
                *(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"]
                  if name == "server" else []))
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-copy_extensions",
                "copy")
    port = free_port()
    server = redis_server(tmp_path, "--port", "0", "--tls-port", str(port),
                          "--tls-cert-file", "server.crt", "--tls-key-file", "server.key",
                          "--tls-ca-cert-file", "ca.crt", "--tls-auth-clients", "yes",
                          "--requirepass", PASSWORD)
    try:
        client = redis.Redis(port=port, ssl=True, password=PASSWORD,
                             ssl_ca_certs=str(tmp_path / "ca.crt"),
                             ssl_certfile=str(tmp_path / "client.crt"),
                             ssl_keyfile=str(tmp_path / "client.key"))
        wait_until(lambda: answers(client), what="redis-server with TLS")
        with pytest.raises(redis.ConnectionError):   # a client without a certificate
            redis.Redis(port=port, ssl=True, password=PASSWORD,
                        ssl_ca_certs=str(tmp_path / "ca.crt")).ping()
        log = run_a_task(coyotes_factory, tmp_path, f"rediss://:{PASSWORD}@127.0.0.1:{port}",
                         "-redis-tls-ca", str(tmp_path / "ca.crt"),
                         "-redis-tls-cert", str(tmp_path / "client.crt"),
                         "-redis-tls-key", str(tmp_path / "client.key"))
        assert f"redis rediss://127.0.0.1:{port} db 0" in log
    finally:
        stop_process(server)


def test_settings_that_can_lose_tasks_are_warned_about_at_start(coyotes_factory, tmp_path):
    port = free_port()
    server = redis_server(tmp_path, "--port", str(port), "--maxmemory-policy", "allkeys-lru")
    try:
        wait_until(lambda: answers(redis.Redis(port=port)), what="redis-server")
        risky = coyotes_factory("-redis-url", f"redis://127.0.0.1:{port}").log()
        assert "maxmemory-policy is allkeys-lru" in risky
        assert "Redis keeps nothing on disk" in risky
    finally:
        stop_process(server)
    safe = coyotes_factory().log()   # the tests' own Redis: appendonly, noeviction
    assert "maxmemory-policy" not in safe and "keeps nothing on disk" not in safe


@pytest.mark.parametrize("given", ["a wrong one", "none"])
def test_a_refused_password_is_one_clear_error_and_a_slow_retry(coyotes_factory, tmp_path,
                                                                 given):
    port = free_port()
    server = redis_server(tmp_path, "--port", str(port), "--requirepass", PASSWORD)
    try:
        wait_until(lambda: answers(redis.Redis(port=port, password=PASSWORD)),
                   what="redis-server")
        secret = tmp_path / "password"
        secret.write_text("not-the-password-42\n")
        more = ["-redis-password-file", str(secret)] if given == "a wrong one" else []
        daemon = coyotes_factory("-redis-host", f"127.0.0.1:{port}", *more, start=False)
        daemon.start(wait=False)
        wait_until(lambda: "refused this node's credentials" in daemon.log(),
                   what="the refusal in the log")
        status, env = daemon.request("GET", "/health")
        assert status == 503, env
        time.sleep(3)   # a fast loop would have said it again by now
        lines = [line for line in daemon.log().splitlines() if "credentials" in line]
        assert len(lines) == 1 and " ERROR " in lines[0], lines
        assert "retrying every 30 s" in lines[0] and "-redis-password-file" in lines[0]
        assert "not-the-password-42" not in daemon.log()
        assert daemon.proc.poll() is None   # it waits; supervisor sees it up
    finally:
        stop_process(server)
