"""PHP producers, as the users have them: phpredis pushing the README payload,
and a form-encoded POST to the HTTP API (what Laravel's Guzzle sends).

Both are real scripts run by php-cli; each task writes a ledger line when it
runs, so the test sees the command itself happen.
"""

from __future__ import annotations

import json
import subprocess

import needs
import pytest
from conftest import ledger_command, read_ledger, wait_until

# The PHP push the README shows (as users of the Go daemon wrote it), with the
# address and task from argv.
PUSH = r"""<?php
$redis = new Redis();
$redis->connect('127.0.0.1', (int) $argv[1]);
$taskName = $argv[2];
$channel = 'default';
$length = $redis->lpush('task:prepare:queue', json_encode([
    'task' => $taskName,
    'chan' => $channel,
    'ts'   => time(),
], JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE));
echo json_encode(['length' => $length]);
"""

# POST application/x-www-form-urlencoded, read the JSON envelope.
POST = r"""<?php
[, $url, $task] = $argv;
$context = stream_context_create(['http' => [
    'method'        => 'POST',
    'header'        => "Content-Type: application/x-www-form-urlencoded\r\n"
                     . "Accept: application/json\r\n",
    'content'       => http_build_query(['task' => $task]),
    'ignore_errors' => true,   // a 4xx/5xx still has a JSON body to read
    'timeout'       => 10,
]]);
$body = file_get_contents($url, false, $context);
if ($body === false) {
    fwrite(STDERR, "no answer from $url\n");
    exit(1);
}
$reply = json_decode($body, true);
echo json_encode([
    'http'        => $http_response_header[0],
    'status_code' => $reply['status_code'],
    'result'      => $reply['data']['result'] ?? null,
    'task_id'     => $reply['data']['task_id'] ?? null,
    'task_name'   => $reply['data']['task_name'] ?? null,
], JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE);
"""


@pytest.fixture
def php():
    return needs.php_with_redis()


def run_php(php: str, tmp_path, source: str, *args) -> dict:
    script = tmp_path / "producer.php"
    script.write_text(source)
    proc = subprocess.run([php, str(script), *map(str, args)], capture_output=True, text=True,
                          timeout=30, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"php failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout)


def ran(ledger, tag: str) -> bool:
    return [(event, t) for event, t, _ in read_ledger(ledger)] == [("start", tag), ("end", tag)]


def test_phpredis_lpush_of_the_readme_snippet_runs(php, coyotes, redis_server, r, tmp_path):
    ledger = tmp_path / "ledger"
    tag = "日报-report"   # unescaped unicode and slashes, as the snippet's flags send them
    task = ledger_command(ledger, tag)

    reply = run_php(php, tmp_path, PUSH, redis_server.port, task)

    assert reply == {"length": 1}
    wait_until(lambda: ran(ledger, tag), timeout=15, what="the task pushed by PHP to run")
    wait_until(lambda: not r.smembers("default:tasks:queue:exec") and not r.llen(
        "task:prepare:queue") and not r.llen("default:tasks:queue"), what="the queues to settle")


@pytest.mark.parametrize("path", ["/channels/default/tasks", "/channels/default"])
def test_php_form_post_to_the_api_runs(php, coyotes, tmp_path, path):
    ledger = tmp_path / "ledger"
    task = ledger_command(ledger, "posted")

    reply = run_php(php, tmp_path, POST, coyotes.url + path, task)

    assert reply["status_code"] == 200, reply
    assert " 200 " in reply["http"]
    assert reply["result"] is True
    assert reply["task_name"] == task
    if path.endswith("/tasks"):
        assert isinstance(reply["task_id"], str) and reply["task_id"]
    wait_until(lambda: ran(ledger, "posted"), timeout=15, what="the task posted by PHP to run")


def test_php_sees_a_refused_duplicate_as_result_false(php, coyotes, tmp_path):
    # default is a distinct channel: the same command line while it is still
    # queued or running is refused, and PHP reads that from data.result.
    ledger = tmp_path / "ledger"
    task = ledger_command(ledger, "twice", sleep=3)
    url = coyotes.url + "/channels/default/tasks"

    first = run_php(php, tmp_path, POST, url, task)
    second = run_php(php, tmp_path, POST, url, task)

    assert (first["status_code"], first["result"]) == (200, True)
    assert (second["status_code"], second["result"]) == (200, False)
    wait_until(lambda: ran(ledger, "twice"), timeout=15, what="the first task to finish")
