"""Signed producers: the checks in-process, then real daemons fed by real php-cli
with phpredis and contrib/coyotes-sign.php, over Redis and HTTP. Only what is
signed with a known key, recently, runs; the rest goes to the dead letters (or
gets 401) with the reason.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import sys

import needs
import pytest
from conftest import LEDGER, ROOT, ended, ledger_command, wait_until

from coyotes_lib.signing import Signatures, Unsigned

SECRET = "shared-secret-0123456789"
KEYS = ((("web-1", SECRET.encode()),))
NOW = 1_800_000_000


def signed(payload: dict, key_id: str = "web-1", secret: str = SECRET, ts: int = NOW) -> str:
    text = json.dumps(payload)
    sig = hmac.new(secret.encode(), f"coyotes1\n{key_id}\n{ts}\n{text}".encode(),
                   hashlib.sha256).hexdigest()
    return json.dumps({"payload": text, "key_id": key_id, "ts": ts, "sig": sig})


# -- in-process ------------------------------------------------------------------------

def test_a_signed_entry_gives_its_payload():
    signatures = Signatures(KEYS, required=True)
    assert json.loads(signatures.entry(signed({"task": "true"}), NOW + 10)) == {"task": "true"}


@pytest.mark.parametrize(("entry", "now", "words"), [
    ('{"task": "true"}', NOW, "unsigned entry"),
    ("not json at all", NOW, "unsigned entry"),
    (signed({"task": "true"}, secret="another-secret-0123456"), NOW, "wrong signature"),
    (signed({"task": "true"}, key_id="web-2"), NOW, "unknown signing key 'web-2'"),
    (signed({"task": "true"}, key_id="ключ"), NOW, "unknown signing key"),
    (signed({"task": "true"}), NOW + 86401, "signature too old (+86401 s; at most 86400 s)"),
    (signed({"task": "true"}), NOW - 301, "signature from the future"),
    (signed({"task": "true"}).replace("true", "false"), NOW, "wrong signature"),
    (json.dumps({**json.loads(signed({"task": "true"})), "task": "rm -rf /"}), NOW,
     "exactly the fields"),
    (json.dumps({**json.loads(signed({"task": "true"})), "ts": "soon"}), NOW, "timestamp"),
    (json.dumps({**json.loads(signed({"task": "true"})), "sig": 42}), NOW, "wrong signature"),
])
def test_what_is_refused_and_why(entry, now, words):
    with pytest.raises(Unsigned) as err:
        Signatures(KEYS, required=True).entry(entry, now)
    assert words in str(err.value), str(err.value)


def test_a_queue_entry_may_wait_a_day_in_the_queue_and_a_push_only_minutes():
    signatures = Signatures(KEYS, required=True)
    assert signatures.entry(signed({"task": "true"}), NOW + 3600)   # a backlog of an hour
    sig = hmac.new(SECRET.encode(), f"coyotes1\nweb-1\n{NOW}\nPOST /channels/default\n\n"
                   .encode(), hashlib.sha256).hexdigest()
    environ = {"PATH_INFO": "/channels/default", "REQUEST_METHOD": "POST",
               "HTTP_X_COYOTES_KEY": "web-1", "HTTP_X_COYOTES_TIMESTAMP": str(NOW),
               "HTTP_X_COYOTES_SIGNATURE": sig}
    signatures.request(environ, b"", NOW + 300)
    with pytest.raises(Unsigned, match="too old"):
        signatures.request(environ, b"", NOW + 3600)


def test_unsigned_entries_pass_unless_required_but_a_signed_one_is_always_checked():
    signatures = Signatures(KEYS, required=False)
    assert signatures.entry('{"task": "true"}', NOW) == '{"task": "true"}'
    with pytest.raises(Unsigned, match="wrong signature"):
        signatures.entry(signed({"task": "true"}, secret="another-secret-0123456"), NOW)


def test_an_http_push_is_signed_over_method_path_query_and_body():
    body = b"task=true"

    def headers(target: str, secret: str = SECRET) -> dict:
        sig = hmac.new(secret.encode(), f"coyotes1\nweb-1\n{NOW}\nPOST {target}\n"
                       f"application/x-www-form-urlencoded\n".encode() + body,
                       hashlib.sha256).hexdigest()
        return {"HTTP_X_COYOTES_KEY": "web-1", "HTTP_X_COYOTES_TIMESTAMP": str(NOW),
                "HTTP_X_COYOTES_SIGNATURE": sig, "REQUEST_METHOD": "POST",
                "CONTENT_TYPE": "application/x-www-form-urlencoded"}
    signatures = Signatures(KEYS, required=True)
    signatures.request({**headers("/channels/default"), "PATH_INFO": "/channels/default"},
                       body, NOW)
    signatures.request({**headers("/channels/default?x=1"), "PATH_INFO": "/channels/default",
                        "QUERY_STRING": "x=1"}, body, NOW)
    for environ, words in (
            ({"PATH_INFO": "/channels/default"}, "unsigned push"),
            ({**headers("/channels/default"), "PATH_INFO": "/channels/biz"}, "wrong signature"),
            ({**headers("/channels/default"), "PATH_INFO": "/channels/default",
              "QUERY_STRING": "delay=60"}, "wrong signature"),
            ({**headers("/channels/default"), "PATH_INFO": "/channels/default",
              "CONTENT_TYPE": "application/json"}, "wrong signature")):
        with pytest.raises(Unsigned, match=words):
            signatures.request(environ, body, NOW)


# -- real daemons, real PHP ---------------------------------------------------------------

PHP_PUSHES = r"""<?php
require $argv[1];
[, , $port, $secret, $ledger, $python, $script] = $argv;
$redis = new Redis();
$redis->connect('127.0.0.1', (int) $port);
$task = fn (string $tag) => ['task' => "$python $script $ledger $tag 0", 'chan' => 'default'];
$redis->lPush('task:prepare:queue', coyotes_signed_entry($task('good'), 'web-1', $secret));
$redis->lPush('task:prepare:queue', coyotes_signed_entry($task('wrong-key'), 'web-1',
                                                         'not-the-secret-0123456789'));
$redis->lPush('task:prepare:queue', coyotes_signed_entry($task('old'), 'web-1', $secret,
                                                         time() - 2 * 86400));
$tampered = json_decode(coyotes_signed_entry($task('tampered'), 'web-1', $secret), true);
$tampered['payload'] = str_replace('tampered', 'tampered-too', $tampered['payload']);
$redis->lPush('task:prepare:queue', json_encode($tampered, JSON_UNESCAPED_SLASHES));
$redis->lPush('task:prepare:queue', json_encode($task('unsigned'), JSON_UNESCAPED_SLASHES));
echo json_encode(['pushed' => 5]);
"""

PHP_POST = r"""<?php
require $argv[1];
[, , $url, $path, $secret, $task, $sign] = $argv;
$body = http_build_query(['task' => $task]);
$headers = "Content-Type: application/x-www-form-urlencoded\r\n";
if ($sign !== 'no') {
    foreach (coyotes_signature_headers('POST', $path, 'application/x-www-form-urlencoded',
             $body, 'web-1',
             $sign === 'yes' ? $secret : 'not-the-secret-0123456789') as $name => $value) {
        $headers .= "$name: $value\r\n";
    }
}
$context = stream_context_create(['http' => ['method' => 'POST', 'header' => $headers,
    'content' => $body, 'ignore_errors' => true, 'timeout' => 10]]);
$reply = json_decode(file_get_contents($url . $path, false, $context), true);
echo json_encode(['status_code' => $reply['status_code'], 'message' => $reply['message']]);
"""


def run_php(php: str, tmp_path, source: str, *args) -> dict:
    script = tmp_path / "producer.php"
    script.write_text(source)
    proc = subprocess.run([php, str(script), str(ROOT / "contrib" / "coyotes-sign.php"),
                           *map(str, args)], capture_output=True, text=True, timeout=30,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"php failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout)


@pytest.fixture
def signing_daemon(coyotes_factory, tmp_path):
    keys = tmp_path / "signing-keys"
    keys.write_text(f"web-1 {SECRET}\n")
    keys.chmod(0o600)
    return coyotes_factory("-signature-keys", str(keys), "-require-signature")


def test_php_signed_entries_run_and_the_others_are_dead_letters(signing_daemon, redis_server,
                                                                 r, tmp_path):
    php = needs.php_with_redis()
    ledger = tmp_path / "ledger"
    assert run_php(php, tmp_path, PHP_PUSHES, redis_server.port, SECRET, ledger,
                   sys.executable, LEDGER) == {"pushed": 5}
    wait_until(lambda: ended(ledger, "good"), what="the signed task to run")
    wait_until(lambda: r.llen("task:prepare:dead") == 4, what="four dead letters")
    reasons = sorted(json.loads(letter)["reason"] for letter in r.lrange("task:prepare:dead",
                                                                         0, -1))
    assert reasons[0].startswith("signature too old (+1728") and reasons[0].endswith(
        " s; at most 86400 s)"), reasons   # two days, or a second more
    assert reasons[1:] == ["unsigned entry (signatures are required)", "wrong signature",
                           "wrong signature"], reasons
    assert not any(ended(ledger, tag) for tag in ("wrong-key", "old", "tampered",
                                                  "tampered-too", "unsigned"))


def test_php_signed_http_pushes(signing_daemon, r, tmp_path):
    php = needs.php_with_redis()
    ledger = tmp_path / "ledger"
    for path in ("/channels/default", "/channels/default/tasks"):
        tag = path.rsplit("/", 1)[-1]
        reply = run_php(php, tmp_path, PHP_POST, signing_daemon.url, path, SECRET,
                        ledger_command(ledger, tag), "yes")
        assert reply["status_code"] == 200, reply
        wait_until(lambda tag=tag: ended(ledger, tag), what=f"the signed push to {path}")
        for sign, words in (("no", "unsigned push"), ("wrong", "wrong signature")):
            reply = run_php(php, tmp_path, PHP_POST, signing_daemon.url, path, SECRET,
                            ledger_command(ledger, "refused"), sign)
            assert reply["status_code"] == 401 and words in reply["message"], reply
    # a push is stored before its reply: a refused one left nothing to run
    assert not any("refused" in entry for entry in r.lrange("default:tasks:queue", 0, -1))
    assert not any("refused" in (r.hget(key, "argv") or "")
                   for key in r.scan_iter("task:record:*"))
