from conftest import ledger_command, read_ledger, wait_until


def test_prepare_queue_task_runs(coyotes, r, tmp_path):
    ledger = tmp_path / "ledger"
    r.lpush("task:prepare:queue", '{"task": "%s", "chan": "default", "ts": 1}'
            % ledger_command(ledger, "one").replace('"', '\\"'))
    wait_until(lambda: [e for e, _, _ in read_ledger(ledger)] == ["start", "end"])
    wait_until(lambda: r.llen("default:tasks:queue") == 0 and not r.smembers("default:tasks:queue:exec"))
