"""The dashboard's server side, over HTTP on real daemons: its files (open, with a
strict content policy, browsers sent there from /), GET /overview (counts, the
per-minute history FINISH keeps, nodes), and the dead-letter actions it uses
(view, delete, requeue as it was or edited). The pages themselves are tested in
a real browser in test_browser.py.
"""

from __future__ import annotations

import json
import sys
import urllib.request

from conftest import assert_error, ok_data, wait_until
from test_access import RO, RW, bearer, token_file

from coyotes_lib.routes import letter_id

PY = sys.executable


def get(daemon, path: str, headers=None):
    """(status, headers, body bytes) of a GET that is not the JSON envelope."""
    req = urllib.request.Request(daemon.url + path, headers=headers or {})

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args):
            return None
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(req, timeout=30) as reply:
            return reply.status, reply.headers, reply.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def test_files_are_served_from_the_package_with_a_strict_policy(coyotes):
    status, headers, body = get(coyotes, "/ui/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b'<script src="app.js"' in body
    policy = headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert headers["X-Content-Type-Options"] == "nosniff"
    for path, kind in (("/ui/app.js", "javascript"), ("/ui/app.css", "text/css")):
        status, headers, body = get(coyotes, path)
        assert status == 200 and kind in headers["Content-Type"] and body
    # revalidated, not fetched again
    etag = get(coyotes, "/ui/app.js")[1]["ETag"]
    assert get(coyotes, "/ui/app.js", {"If-None-Match": etag})[0] == 304
    assert get(coyotes, "/ui")[0:2][0] == 301
    # nothing outside the folder, and the API's own 404
    for path in ("/ui/../routes.py", "/ui/%2e%2e/routes.py", "/ui/nothing.js"):
        status, _, body = get(coyotes, path)
        assert status == 404, path
        assert json.loads(body)["status_code"] == 404


def test_a_browser_is_sent_to_the_dashboard_and_json_callers_are_not(coyotes):
    status, headers, _ = get(coyotes, "/", {"Accept": "text/html,application/xhtml+xml,*/*"})
    assert status == 302 and headers["Location"] == "/ui/"
    # curl, PHP and the Go API's callers get the JSON as before
    for accept in (None, "*/*", "application/json"):
        data = ok_data(coyotes.request("GET", "/", headers={"Accept": accept} if accept else {}))
        assert data["name"] == "coyotes"


def test_files_are_open_but_the_data_needs_the_token(coyotes_factory, tmp_path):
    daemon = coyotes_factory("-api-token-file", token_file(tmp_path))
    assert get(daemon, "/ui/")[0] == 200
    assert get(daemon, "/ui/app.js")[0] == 200
    assert get(daemon, "/", {"Accept": "text/html"})[0] == 302
    assert_error(daemon.request("GET", "/overview"), 401)
    assert_error(daemon.request("GET", "/"), 401)   # the JSON home still needs one
    assert ok_data(daemon.request("GET", "/overview", headers=bearer(RO)))["channels"]
    # a link from another site may open the page, not act
    assert get(daemon, "/ui/", {"Sec-Fetch-Site": "cross-site"})[0] == 200
    assert_error(daemon.request("POST", "/channels/default/pause", headers={
        **bearer(RW), "Sec-Fetch-Site": "cross-site"}), 403)
    assert_error(daemon.request("POST", "/channels/default/pause", headers={
        **bearer(RW), "Origin": "http://evil.example"}), 403)
    # not a way around the token: only GET and HEAD of the files are open
    assert_error(daemon.request("POST", "/ui/", {}), 401)


def test_overview_counts_and_the_last_hour(coyotes, r):
    ok_data(coyotes.request("POST", "/channels", {"name": "mail", "worker": 2}))
    for _ in range(3):
        ok_data(coyotes.request("POST", "/channels/mail/tasks", {"command": "true"}))
    ok_data(coyotes.request("POST", "/channels/mail/tasks", {"command": "false"}))
    ok_data(coyotes.request("POST", "/channels/mail/tasks", {"command": "true", "delay": 600}))
    wait_until(lambda: ok_data(coyotes.request("GET", "/channels/mail"))["counts"] == {
        "running": 0, "queued": 0, "failed": 1}, 20, what="tasks done")
    ok_data(coyotes.request("POST", "/channels/mail/pause"))
    view = ok_data(coyotes.request("GET", "/overview"))
    mail = {c["name"]: c for c in view["channels"]}["mail"]
    assert mail["paused"] is True and mail["worker"] == 2 and mail["failed"] == 1
    assert mail["delayed"] == 1 and view["delayed"] == 1 and view["delayed_counted"]
    assert mail["queued"] == 0 and mail["running"] == 0
    done, failed = mail["finished_per_minute"], mail["failed_per_minute"]
    assert len(done) == len(failed) == 60
    assert sum(done[-2:]) == 4 and sum(failed[-2:]) == 1   # a minute may have turned
    assert sum(done[:-2]) == 0
    assert [n["id"] for n in view["nodes"]] == [view["node"]]
    assert view["nodes"][0]["alive"] and view["dead_letters"] == 0


def test_dead_letters_view_delete_and_requeue(coyotes, r, tmp_path):
    marker = tmp_path / "ran"
    good = json.dumps({"chan": "default", "id": "revived", "command": {"name": PY, "args": [
        "-c", f"open({str(marker)!r}, 'w').close()"]}})
    r.lpush("task:prepare:queue", "{broken", '{"chan": "nowhere", "argv": ["true"]}')
    wait_until(lambda: r.llen("task:prepare:dead") == 2, 20, what="two dead letters")
    letters = ok_data(coyotes.request("GET", "/dead-letters"))["entries"]
    assert {item["id"] for item in letters} == {letter_id(text) for text in
                                                r.lrange("task:prepare:dead", 0, -1)}
    broken = next(item for item in letters if item["entry"] == "{broken")
    assert ok_data(coyotes.request("GET", f"/dead-letters/{broken['id']}")) == broken
    # as it was: the router refuses it again, with a new letter
    ok_data(coyotes.request("POST", f"/dead-letters/{broken['id']}/requeue"))
    wait_until(lambda: json.loads(r.lindex("task:prepare:dead", 0) or "{}").get("entry")
               == "{broken", 20, what="refused again")
    assert r.llen("task:prepare:dead") == 2
    # edited into a task that runs
    nowhere = next(item for item in letters if item["entry"] != "{broken")
    ok_data(coyotes.request("POST", f"/dead-letters/{nowhere['id']}/requeue", {"entry": good}))
    wait_until(marker.exists, 20, what="the edited entry ran")
    wait_until(lambda: ok_data(coyotes.request("GET", "/tasks/revived"))["status"]
               == "succeeded", 20, what="its record")
    # deleted
    (last,) = ok_data(coyotes.request("GET", "/dead-letters"))["entries"]
    ok_data(coyotes.request("DELETE", f"/dead-letters/{last['id']}"))
    assert r.llen("task:prepare:dead") == 0
    assert_error(coyotes.request("DELETE", f"/dead-letters/{last['id']}"), 404)


def test_a_letter_is_found_anywhere_in_a_long_list(coyotes, r):
    letters = [json.dumps({"entry": f"e{n}", "reason": "test"}) for n in range(2500)]
    r.rpush("task:prepare:dead", *letters)   # newest first: index n holds e{n}
    deep = letter_id(letters[2345])
    for hint in ("", "?at=2345", "?at=7", "?at=99999", "?at=-1", "?at=x"):
        assert ok_data(coyotes.request("GET", f"/dead-letters/{deep}{hint}"))["entry"] == "e2345"
    ok_data(coyotes.request("DELETE", f"/dead-letters/{deep}?at=2345"))
    assert r.llen("task:prepare:dead") == 2499 and letters[2345] not in r.lrange(
        "task:prepare:dead", 2300, 2400)
    assert_error(coyotes.request("GET", f"/dead-letters/{deep}"), 404)


def test_requeue_refusals_write_nothing(coyotes, r):
    r.lpush("task:prepare:dead", json.dumps({"entry": "x" * 10, "reason": "too long",
                                             "truncated": True}),
            json.dumps({"reason": "no entry"}))
    cut, empty = (letter_id(text) for text in r.lrange("task:prepare:dead", 0, -1)[::-1])
    before = r.lrange("task:prepare:dead", 0, -1)
    assert "whole entry" in assert_error(
        coyotes.request("POST", f"/dead-letters/{cut}/requeue"), 409)
    assert_error(coyotes.request("POST", f"/dead-letters/{empty}/requeue"), 409)
    assert_error(coyotes.request("POST", f"/dead-letters/{cut}/requeue", {"entry": 5}), 400)
    assert_error(coyotes.request("POST", f"/dead-letters/{cut}/requeue", {"entry": " "}), 400)
    assert_error(coyotes.request("POST", f"/dead-letters/{cut}/requeue",
                                 {"entry": "x" * ((1 << 20) + 1)}), 413)
    assert_error(coyotes.request("POST", "/dead-letters/0123456789abcdef/requeue"), 404)
    assert r.lrange("task:prepare:dead", 0, -1) == before
    assert r.llen("task:prepare:queue") == 0
