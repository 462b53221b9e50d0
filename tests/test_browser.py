"""The dashboard in a real browser: Debian's headless Chromium driven by Playwright,
against real daemons and redis-servers.

The tests push tasks and watch them appear, pause a channel on one node's page
and see it on another's, resize it, retry a failed task, follow a task's output
while it prints, cancel a delayed task, run and toggle a schedule, requeue an
edited dead letter, and sign in with an API token. Each page is saved as a
screenshot under the run's output directory (``<basetemp>/screenshots``; also
into ``$COYOTES_SCREENSHOTS`` when set, which is how docs/images is made), in
English on a desktop and in Chinese on a phone's width. An uncaught JavaScript
error or a console error on any page fails the test that opened it.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import needs
import pytest
from conftest import ok_data, wait_until
from playwright.sync_api import expect
from test_access import RO, RW, token_file

PY = sys.executable
WAIT = 15_000   # ms a page has to show a change (it refreshes every second)
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 860}


@pytest.fixture(scope="module")
def browser():
    chromium = needs.program("chromium", "chromium")
    from playwright.sync_api import sync_playwright
    playwright = sync_playwright().start()
    launched = playwright.chromium.launch(executable_path=chromium, headless=True)
    yield launched
    launched.close()
    playwright.stop()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> list[Path]:
    """Where screenshots go: the run's output directory, and $COYOTES_SCREENSHOTS."""
    folders = [tmp_path_factory.getbasetemp() / "screenshots"]
    if os.environ.get("COYOTES_SCREENSHOTS"):
        folders.append(Path(os.environ["COYOTES_SCREENSHOTS"]))
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    return folders


@pytest.fixture
def open_page(browser, shots):
    """open_page(url, locale=..., viewport=...) -> a page; every JavaScript error it
    meets is collected and fails the test at its end. Confirmation dialogs are
    accepted."""
    contexts, errors = [], []

    def make(url: str, locale: str = "en-US", viewport=DESKTOP):
        context = browser.new_context(locale=locale, viewport=viewport)
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda exc: errors.append(f"{page.url}: {exc}"))
        # the API's refusals (401, 403, 404) are answers the page shows, not errors
        page.on("console", lambda msg: msg.type == "error"
                and not msg.text.startswith("Failed to load resource")
                and errors.append(f"{page.url}: console: {msg.text}"))
        page.on("dialog", lambda dialog: dialog.accept())
        page.goto(url)
        return page

    yield make
    for context in contexts:
        context.close()
    assert errors == [], errors


# the pictures docs/DASHBOARD.md shows (every page is saved in the output directory)
DOC_PICTURES = {"dashboard-overview", "dashboard-channel", "dashboard-task",
                "dashboard-failed", "dashboard-dead-letters", "dashboard-overview-zh-phone",
                "dashboard-task-zh-phone"}


def shoot(page, shots: list[Path], name: str) -> None:
    page.wait_for_load_state("networkidle")
    first = shots[0] / f"{name}.png"
    page.screenshot(path=str(first), full_page=True)
    if name in DOC_PICTURES:
        for folder in shots[1:]:
            shutil.copyfile(first, folder / first.name)


def row(page, text: str):
    """The table row whose first link is exactly ``text``."""
    return page.locator("tbody tr").filter(has=page.get_by_role("link", name=text, exact=True))


def push(daemon, channel: str, command, **more) -> str:
    return ok_data(daemon.request("POST", f"/channels/{channel}/tasks",
                                  {"command": command, **more}))["task_id"]


def python(script: str) -> dict:
    return {"name": PY, "args": ["-c", script]}


def test_every_page_in_english_and_chinese(coyotes, r, open_page, shots, gate):
    """Each page shows what it is about, on a desktop in English and on a phone in
    Chinese, and is saved as a screenshot."""
    # the gate is in the daemon's (and its commands') working directory
    ok_data(coyotes.request("POST", "/channels", {"name": "emails", "worker": 3}))
    ok_data(coyotes.request("POST", "/channels", {"name": "reports", "worker": 1}))
    for _ in range(4):
        push(coyotes, "emails", "true")
    # python3 by name (as a user would write it): the pictures show no machine paths
    push(coyotes, "default", {"name": "python3", "args": [
        "-c", "import sys; print('SMTP refused', file=sys.stderr); sys.exit(3)"]},
         id="broken-1")
    push(coyotes, "reports", {"name": "python3", "args": [
        "-c", ("import os, time\nfor i in range(3): print('report line', i, flush=True)\n"
        "while not os.path.exists('gate'): time.sleep(0.05)")]}, id="report-7")
    push(coyotes, "emails", "true", delay=3600, id="later-1")
    for n in range(3):
        push(coyotes, "reports", "true", id=f"queued-{n}")
    ok_data(coyotes.request("POST", "/schedules", {"name": "nightly", "cron": "0 3 * * *",
                                                   "command": "php artisan report:daily",
                                                   "channel": "reports"}))
    r.lpush("task:prepare:queue", '{"chan": "default", "task": "unterminated \'quote"}')
    wait_until(lambda: r.llen("task:prepare:dead") == 1, 20, what="a dead letter")
    wait_until(lambda: ok_data(coyotes.request("GET", "/tasks/broken-1"))["status"] == "failed",
               20, what="the failed task")
    wait_until(lambda: ok_data(coyotes.request("GET", "/tasks/report-7"))["status"] == "running",
               20, what="the running task")
    pages = [("overview", "#/", "emails"), ("channel", "#/channels/reports", "queued-2"),
             ("task", "#/tasks/report-7", "report line 2"), ("failed", "#/failed", "broken-1"),
             ("delayed", "#/delayed", "later-1"), ("schedules", "#/schedules", "nightly"),
             ("dead-letters", "#/dead-letters", "unterminated")]
    for locale, viewport, suffix in (("en-US", DESKTOP, ""), ("zh-CN", PHONE, "-zh-phone")):
        page = open_page(f"{coyotes.url}/ui/", locale=locale, viewport=viewport)
        assert page.locator("html").get_attribute("lang") == ("zh-CN" if suffix else "en")
        for name, hash_, shown in pages:
            page.goto(f"{coyotes.url}/ui/{hash_}")
            expect(page.locator("main")).to_contain_text(shown, timeout=WAIT)
            shoot(page, shots, f"dashboard-{name}{suffix}")
        expect(page.locator("nav")).to_contain_text("概览" if suffix else "Overview")
        # a broken escape in the address is shown as it is, not an error
        page.goto(f"{coyotes.url}/ui/#/channels/%zz")
        expect(page.locator("h1")).to_contain_text("%zz", timeout=WAIT)
        # nothing wider than the phone: tables scroll inside their box
        if suffix:
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= PHONE["width"], width
    gate.touch()


def test_pushed_tasks_appear_and_pause_shows_on_another_node(coyotes_factory, open_page, shots):
    first = coyotes_factory(node_id="node-a")
    second = coyotes_factory(node_id="node-b")
    ok_data(first.request("POST", "/channels", {"name": "jobs", "worker": 2}))
    page_a = open_page(f"{first.url}/ui/#/channels/jobs")
    page_b = open_page(f"{second.url}/ui/#/")
    expect(row(page_b, "jobs")).to_contain_text("active", timeout=WAIT)
    # pause on A's page: B's overview says so without a reload
    page_a.locator("#pause").click()
    expect(page_a.locator("h1 .badge")).to_have_text("paused", timeout=WAIT)
    expect(row(page_b, "jobs").locator("td").nth(1)).to_have_text("paused", timeout=WAIT)
    # pushed tasks wait in the paused channel: both pages count them as they come
    for n in range(5):
        push(first, "jobs", "true", id=f"job-{n}")
    expect(row(page_b, "jobs").locator("td").nth(2)).to_have_text("5", timeout=WAIT)
    expect(page_a.locator("main")).to_contain_text("job-4", timeout=WAIT)
    # resized on B, resumed on B: A's page shows both, and the tasks run
    page_b.goto(f"{second.url}/ui/#/channels/jobs")
    expect(page_b.locator("#max_running")).to_have_value("0", timeout=WAIT)
    page_b.locator("#worker").fill("4")
    # meanwhile, elsewhere: the limit changes; saving the workers keeps it
    ok_data(first.request("PATCH", "/channels/jobs", {"max_running": 7}))
    page_b.locator("#resize").click()
    wait_until(lambda: ok_data(first.request("GET", "/channels/jobs"))["settings"]["worker"] == 4,
               20, what="the new worker count")
    assert ok_data(first.request("GET", "/channels/jobs"))["settings"]["max_running"] == 7
    expect(page_b.locator("#max_running")).to_have_value("7", timeout=WAIT)
    page_b.locator("#resume").click()
    expect(page_a.locator("h1 .badge")).to_have_text("active", timeout=WAIT)
    wait_until(lambda: ok_data(first.request("GET", "/channels/jobs"))["counts"]["queued"] == 0,
               20, what="the tasks ran")
    page_a.goto(f"{first.url}/ui/#/")
    expect(row(page_a, "jobs").locator("td").nth(2)).to_have_text("0", timeout=WAIT)
    expect(page_a.locator("main")).to_contain_text("node-b", timeout=WAIT)   # both nodes
    shoot(page_a, shots, "two-nodes")


def test_retry_a_failed_task(coyotes, open_page, tmp_path):
    marker = tmp_path / "tried"
    # fails the first time, succeeds when retried
    task_id = push(coyotes, "default", python(
        f"import os, sys\np = {str(marker)!r}\n"
        "if not os.path.exists(p):\n    open(p, 'w').close()\n    sys.exit(5)\n"
        "print('second time')"),
        id="flaky-1")
    wait_until(lambda: ok_data(coyotes.request("GET", f"/tasks/{task_id}"))["status"] == "failed",
               20, what="the first failure")
    page = open_page(f"{coyotes.url}/ui/#/failed")
    failed = row(page, task_id)
    expect(failed.locator("td").nth(2)).to_have_text("5", timeout=WAIT)   # its exit code
    failed.locator("button.retry").click()
    expect(failed).to_have_count(0, timeout=WAIT)
    page.goto(f"{coyotes.url}/ui/#/tasks/{task_id}")
    expect(page.locator("h1 .badge")).to_have_text("succeeded", timeout=WAIT)
    expect(page.locator("#output")).to_contain_text("second time", timeout=WAIT)


def test_live_output_arrives_while_the_task_runs(coyotes, open_page, gate):
    task_id = push(coyotes, "default", python(
        f"import os, sys, time\nprint('before the gate', flush=True)\n"
        f"print('a warning', file=sys.stderr, flush=True)\n"
        f"while not os.path.exists({str(gate)!r}): time.sleep(0.05)\n"
        "for i in range(3):\n    print('after', i, flush=True)\n    time.sleep(0.2)"))
    page = open_page(f"{coyotes.url}/ui/#/tasks/{task_id}")
    output = page.locator("#output")
    expect(output).to_contain_text("before the gate", timeout=WAIT)
    expect(output.locator(".stderr")).to_contain_text("a warning")
    expect(page.locator("h1 .badge")).to_have_text("running")
    assert "after" not in output.inner_text()   # the task has not gone on: this is live
    gate.touch()
    expect(output).to_contain_text("after 2", timeout=WAIT)
    expect(page.locator("h2")).to_contain_text("ended", timeout=WAIT)
    expect(page.locator("h1 .badge")).to_have_text("succeeded", timeout=WAIT)
    # each line once, in order
    assert output.locator(".stdout").all_inner_texts() == [
        "before the gate\n", "after 0\n", "after 1\n", "after 2\n"]
    assert output.locator(".stderr").all_inner_texts() == ["a warning\n"]


def test_delayed_schedules_and_dead_letters(coyotes, r, open_page, tmp_path):
    push(coyotes, "default", "true", delay=3600, id="later-9")
    page = open_page(f"{coyotes.url}/ui/#/delayed")
    row(page, "later-9").get_by_role("button").click()
    expect(row(page, "later-9")).to_have_count(0, timeout=WAIT)
    assert ok_data(coyotes.request("GET", "/tasks/later-9"))["status"] == "canceled"

    ok_data(coyotes.request("POST", "/schedules", {"name": "hourly", "cron": "0 * * * *",
                                                   "command": "true"}))
    page.goto(f"{coyotes.url}/ui/#/schedules")
    hourly = page.locator("tbody tr").filter(has_text="hourly")
    hourly.locator("button.toggle").click()
    expect(hourly.locator(".badge").first).to_have_text("disabled", timeout=WAIT)
    assert ok_data(coyotes.request("GET", "/schedules/hourly"))["enabled"] is False
    hourly.locator("button.run").click()
    expect(page.locator("#notice")).to_contain_text("Done", timeout=WAIT)
    wait_until(lambda: r.keys("task:record:hourly@run-*"), 20, what="the task it queued")
    hourly.locator("button.toggle").click()
    expect(hourly.locator(".badge").first).to_have_text("enabled", timeout=WAIT)

    # a letter that kept only the start of its entry is not queued as it is
    r.lpush("task:prepare:queue", json.dumps({"chan": "missing", "task": "x" * 20_000}))
    page.goto(f"{coyotes.url}/ui/#/dead-letters")
    page.locator("button.view").first.click(timeout=WAIT)
    expect(page.locator("#requeue")).to_be_disabled()
    page.get_by_role("button", name="Delete").first.click()
    expect(page.locator("button.view")).to_have_count(0, timeout=WAIT)

    marker = tmp_path / "revived"
    r.lpush("task:prepare:queue", json.dumps({"chan": "missing", "command": {
        "name": PY, "args": ["-c", f"open({str(marker)!r}, 'w').close()"]}}))
    page.goto(f"{coyotes.url}/ui/#/dead-letters")
    page.locator("button.view").first.click(timeout=WAIT)
    editor = page.locator("#letter-entry")
    fixed = editor.input_value().replace('"missing"', '"default"')
    editor.fill(fixed)
    for _ in range(2):   # a refresh (after the one that may be under way) keeps it
        with page.expect_response(lambda reply: "/dead-letters?" in reply.url, timeout=WAIT):
            pass
    assert editor.input_value() == fixed
    page.locator("#requeue").click()
    wait_until(marker.exists, 20, what="the edited entry ran")
    expect(page.locator("button.view")).to_have_count(0, timeout=WAIT)
    assert r.llen("task:prepare:dead") == 0


def test_behind_the_api_token(coyotes_factory, open_page, tmp_path):
    daemon = coyotes_factory("-api-token-file", token_file(tmp_path))
    page = open_page(f"{daemon.url}/")   # a browser at / is sent to the dashboard
    expect(page.locator("#token")).to_be_visible(timeout=WAIT)
    # the menu while the form shows: the next page asks again
    page.get_by_role("link", name="Failed").click()
    expect(page.locator("#token")).to_be_visible(timeout=WAIT)
    page.locator("#token").fill("not-the-token")
    page.locator("form.token button").click()
    expect(page.locator("form.token")).to_contain_text("not valid", timeout=WAIT)
    # read-only: the pages show, the actions are refused with the API's reason
    page.locator("#token").fill(RO)
    page.locator("form.token button").click()
    expect(page.locator("main")).to_contain_text("No channel has failed tasks", timeout=WAIT)
    page.goto(f"{daemon.url}/ui/#/")
    expect(row(page, "default")).to_be_visible(timeout=WAIT)
    page.goto(f"{daemon.url}/ui/#/channels/default")
    page.locator("#pause").click()
    expect(page.locator("#notice")).to_contain_text("read-only", timeout=WAIT)
    assert ok_data(daemon.request("GET", "/channels/default", headers={
        "Authorization": f"Bearer {RW}"}))["paused"] is False
    # forget it, sign in with the read-write one: the action goes through
    page.get_by_role("link", name="Forget token").click()
    page.locator("#token").fill(RW)
    page.locator("form.token button").click()
    page.goto(f"{daemon.url}/ui/#/channels/default")
    page.locator("#pause").click()
    expect(page.locator("h1 .badge")).to_have_text("paused", timeout=WAIT)
