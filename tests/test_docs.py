"""The documentation holds together: every relative link of the READMEs and of
docs/ leads to a file that exists and, with an #anchor, to a heading of it;
the READMEs stay short and keep the two set-up commands; the benchmark report
names no path of the machine it ran on.

Anchors follow GitHub's rule (github-slugger): the heading's text, lowercased,
spaces to '-', punctuation and symbols dropped except '-' and '_', letters of
every script (CJK included) kept; a repeated heading gets -1, -2 ...
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", ROOT / "README.zh-CN.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 300
MACHINE_PATHS = ("/work/", "/tmp/", "/root/", "/home/")

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
# [text](target) and ![alt](target); the target ends at a space (a title) or ')'
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"")


def prose(text: str) -> list[tuple[int, str]]:
    """(line number, line) of a Markdown text, outside fenced code blocks."""
    lines, fence = [], ""
    for number, line in enumerate(text.splitlines(), 1):
        match = FENCE.match(line)
        if fence:
            if match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence):
                fence = ""
            continue
        if match:
            fence = match.group(1)
            continue
        lines.append((number, line))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text."""
    text = CODE_SPAN.sub(lambda m: m.group(2), heading.strip())
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)   # a link: its text
    text = re.sub(r"<[^>]+>", "", text)                       # inline HTML tags
    out = []
    for char in text.lower():
        if char == " ":
            out.append("-")
        elif char in "-_" or unicodedata.category(char)[0] in "LNM":
            out.append(char)
    return "".join(out)


def anchors(path: Path) -> set[str]:
    """Every anchor the headings (and explicit <a name>) of a file produce."""
    seen: dict[str, int] = {}
    found = set()
    for _, line in prose(path.read_text(encoding="utf-8")):
        found.update(HTML_ANCHOR.findall(line))
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every link outside code, in one file."""
    return [(number, target) for number, line in prose(path.read_text(encoding="utf-8"))
            for target in LINK.findall(CODE_SPAN.sub("", line))]


def broken_links(path: Path, root: Path = ROOT) -> list[str]:
    """What is wrong with the relative links of one file, in words."""
    problems = []
    for number, target in links(path):
        if not target or re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):
            continue   # http:, https:, mailto: ... are not checked here
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        where = f"{path.relative_to(root)}:{number}: {target}"
        if not dest.exists():
            problems.append(f"{where}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"{where}: no heading makes #{anchor} in {dest.name}")
        elif anchor and dest.suffix != ".md":
            problems.append(f"{where}: an anchor into a file that is not Markdown")
    return problems


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    problems = broken_links(path)
    assert not problems, "\n".join(problems)


def test_the_link_check_sees_a_broken_link(tmp_path):
    """The check above can fail: a missing file, a missing anchor, a good link."""
    (tmp_path / "OTHER.md").write_text("# Other page\n\n## Two words\n", encoding="utf-8")
    page = tmp_path / "PAGE.md"
    page.write_text(
        "# 页面\n\n## Same\n\n## Same\n\n"
        "[ok](OTHER.md#two-words) [ok](#same-1) [ok](#页面) [web](https://example.com)\n"
        "[gone](NOPE.md) [no anchor](OTHER.md#three-words)\n\n"
        "```\n[in code](NOPE.md)\n```\n", encoding="utf-8")
    problems = broken_links(page, root=tmp_path)
    assert [p.split(": ", 1)[1] for p in problems] == [
        "NOPE.md: no such file", "OTHER.md#three-words: no heading makes #three-words in OTHER.md"]


@pytest.mark.parametrize(("heading", "anchor"), [
    ("Quick start", "quick-start"),
    ("`GET /tasks/{id}`: a task's record", "get-tasksid-a-tasks-record"),
    ("`POST /channels/{name}/tasks`: push a task (argv, id, delay)",
     "post-channelsnametasks-push-a-task-argv-id-delay"),
    ("通过 HTTP\uff08Guzzle 或 curl\uff09", "通过-httpguzzle-或-curl"),   # full-width ( )
    ("`GET /tasks/{id}` 查询任务记录", "get-tasksid-查询任务记录"),
    ("Channel 与去重", "channel-与去重"),
    ("snake_case and -dashes-", "snake_case-and--dashes-"),
])
def test_slugs_follow_github(heading, anchor):
    assert slug(heading) == anchor


@pytest.mark.parametrize("name", ["README.md", "README.zh-CN.md"])
def test_readme_is_short_and_keeps_the_two_commands(name):
    text = (ROOT / name).read_text(encoding="utf-8")
    assert len(text.splitlines()) <= README_MAX_LINES
    assert "make run" in text
    assert "make test" in text


def test_benchmarks_name_no_machine_path():
    text = (ROOT / "docs" / "BENCHMARKS.md").read_text(encoding="utf-8")
    found = [line for line in text.splitlines() if any(p in line for p in MACHINE_PATHS)]
    assert not found, "\n".join(found)
