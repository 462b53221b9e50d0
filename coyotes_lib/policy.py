"""A channel's command policy: which programs its tasks may run, with which
arguments, and how: working directory, environment, user and group, resource
limits, an output cap.

The policy is stored with the channel's settings and checked wherever a task
enters or starts: an HTTP push (403), the prepare queue (dead letter) and the
worker (the task fails with the reason, so an entry pushed straight into a
channel queue, or queued before the policy changed, never runs either). What
it sets is applied by the command line itself, so both runners apply it alike:
``prlimit`` sets the limits and ``setpriv`` the user, then ``env -C`` the
directory (util-linux and coreutils, both essential packages); each execs the
next, and the command keeps the pid the daemon watches.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import grp
import os
import pwd
import re
import shlex
import shutil

# limit -> (prlimit's option, lowest, highest)
LIMITS = {"cpu": ("--cpu", 1, 366 * 86400), "as": ("--as", 1 << 20, 1 << 50),
          "nofile": ("--nofile", 8, 1 << 20), "nproc": ("--nproc", 1, 1 << 22)}
KEYS = ("allow", "cwd", "env", "user", "group", "limits", "output_max")
ANY_REST = "..."     # a rule's last pattern: any further arguments
MAX_RULES, MAX_RULE = 200, 4096
ENV_ITEM = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}(=.{0,4096})?$", re.S)


class BadPolicy(ValueError):
    """A policy that cannot be stored, with the reason (a 400)."""


class Refused(Exception):
    """A task its channel's policy does not allow, with the reason."""


@dataclasses.dataclass(frozen=True)
class Rule:
    """An allowed program (an absolute path) and patterns for its arguments, one
    each (fnmatch: ``*``, ``?``, ``[...]``); a last ``...`` takes any further
    arguments. No pattern: any arguments."""
    program: str
    patterns: tuple[str, ...] = ()

    def allows(self, args: list[str]) -> bool:
        patterns = self.patterns
        if not patterns:
            return True
        if patterns[-1] == ANY_REST:
            patterns = patterns[:-1]
            if len(args) < len(patterns):
                return False
            args = args[:len(patterns)]
        return len(args) == len(patterns) and all(
            fnmatch.fnmatchcase(arg, pattern) for arg, pattern in zip(args, patterns,
                                                                       strict=True))

    def text(self) -> str:
        return shlex.join([self.program, *self.patterns])


@dataclasses.dataclass(frozen=True)
class CommandPolicy:
    allow: tuple[Rule, ...] = ()     # empty: any program
    cwd: str = ""
    env: tuple[str, ...] | None = None   # NAME (passed on) or NAME=VALUE; None: inherited
    user: str = ""
    group: str = ""
    limits: tuple[tuple[str, int], ...] = ()
    output_max: int = 0              # bytes of stdout and stderr together; 0: no cap
    broken: str = ""                 # stored but unreadable: every task is refused

    @classmethod
    def parse(cls, data, resolve: bool = True) -> CommandPolicy:
        """From the API or the config file (``resolve``: program names found on PATH
        now, the directory, user and group checked on this machine), or as stored
        (already resolved)."""
        if not isinstance(data, dict):
            raise BadPolicy("command_policy must be an object")
        unknown = sorted(set(data) - set(KEYS))
        if unknown:
            raise BadPolicy(f"command_policy: unknown field(s) {', '.join(unknown)}; "
                            f"its fields are {', '.join(KEYS)}")
        allow = data.get("allow") or []
        if not isinstance(allow, list) or len(allow) > MAX_RULES or \
                not all(isinstance(rule, str) and 0 < len(rule) <= MAX_RULE for rule in allow):
            raise BadPolicy(f"command_policy.allow must be a list of at most {MAX_RULES} "
                            "command patterns such as \"php artisan *\"")
        env = data.get("env")
        if env is not None and (not isinstance(env, list) or len(env) > 256 or not all(
                isinstance(item, str) and ENV_ITEM.match(item) for item in env)):
            raise BadPolicy("command_policy.env must be a list of NAME (passed on from "
                            "Coyotes' environment) or NAME=VALUE")
        limits = data.get("limits") or {}
        if not isinstance(limits, dict) or set(limits) - set(LIMITS):
            raise BadPolicy(f"command_policy.limits takes {', '.join(LIMITS)}")
        for name, value in limits.items():
            _, low, high = LIMITS[name]
            if isinstance(value, bool) or not isinstance(value, int) or \
                    not low <= value <= high:
                raise BadPolicy(f"command_policy.limits.{name} must be an integer "
                                f"{low}..{high}")
        output_max = data.get("output_max") or 0
        if isinstance(output_max, bool) or not isinstance(output_max, int) or \
                not 0 <= output_max <= 1 << 40:
            raise BadPolicy("command_policy.output_max must be 0..2**40 bytes (0: no cap)")
        for key in ("cwd", "user", "group"):
            if not isinstance(data.get(key) or "", str):
                raise BadPolicy(f"command_policy.{key} must be a string")
        policy = cls(tuple(rule_of(text, resolve) for text in allow), data.get("cwd") or "",
                     None if env is None else tuple(env), data.get("user") or "",
                     data.get("group") or "", tuple(sorted(limits.items())), output_max)
        if resolve:
            policy.check_machine()
        return policy

    def check_machine(self) -> None:
        """The directory, user and group exist here."""
        if self.cwd and (not os.path.isabs(self.cwd) or not os.path.isdir(self.cwd)):
            raise BadPolicy(f"command_policy.cwd: {self.cwd!r} is not an absolute path to "
                            "a directory")
        try:
            self.ids()
        except Refused as exc:
            raise BadPolicy(f"command_policy: {exc}") from None

    def to_dict(self, shown: bool = False) -> dict:
        """As stored; ``shown``: for the API and the log, the values the environment
        sets hidden (they may be secrets)."""
        out: dict = {"allow": [rule.text() for rule in self.allow]} if self.allow else {}
        if self.cwd:
            out["cwd"] = self.cwd
        if self.env is not None:
            out["env"] = [f"{item.partition('=')[0]}=***" if shown and "=" in item else item
                          for item in self.env]
        if self.user:
            out["user"] = self.user
        if self.group:
            out["group"] = self.group
        if self.limits:
            out["limits"] = dict(self.limits)
        if self.output_max:
            out["output_max"] = self.output_max
        return out

    # What follows depends on the policy alone, and a channel keeps its policy object
    # until its settings change: worked out once, not for every task (a PATH search
    # per helper, user and group lookups, a realpath per rule).
    def environment(self) -> dict[str, str] | None:
        """The command's environment (shared: not to be changed): None for the
        daemon's own."""
        return self._environment

    @functools.cached_property
    def _environment(self) -> dict[str, str] | None:
        if self.env is None:
            return None
        out = {}
        for item in self.env:
            name, eq, value = item.partition("=")
            if eq:
                out[name] = value
            elif name in os.environ:
                out[name] = os.environ[name]
        return out

    def ids(self) -> tuple[int, int] | None:
        """(uid, gid) to run as, or None to stay as we are; Refused when they are
        unknown here, or differ from ours and we are not root."""
        return self._ids

    @functools.cached_property
    def _ids(self) -> tuple[int, int] | None:
        if not self.user and not self.group:
            return None
        try:
            entry = pwd.getpwuid(int(self.user)) if self.user.isdigit() else \
                pwd.getpwnam(self.user) if self.user else pwd.getpwuid(os.geteuid())
        except (KeyError, OverflowError):
            raise Refused(f"no user {self.user!r} on this machine") from None
        try:
            gid = entry.pw_gid if not self.group else int(self.group) \
                if self.group.isdigit() else grp.getgrnam(self.group).gr_gid
            if self.group.isdigit():
                grp.getgrgid(gid)
        except (KeyError, OverflowError):
            raise Refused(f"no group {self.group!r} on this machine") from None
        if os.geteuid() != 0 and (entry.pw_uid, gid) != (os.geteuid(), os.getegid()):
            raise Refused(f"it would run as {entry.pw_name} (group {gid}), but Coyotes does "
                          "not run as root")
        return entry.pw_uid, gid

    def program(self, argv: list[str]) -> str:
        """The absolute path argv[0] runs, if the policy allows argv; else Refused."""
        if self.broken:
            raise Refused(f"the channel's stored command policy is unreadable ({self.broken})")
        name = argv[0]
        if "/" in name:
            path = os.path.normpath(os.path.join(self.cwd or os.getcwd(), name))
        else:
            env = self.environment()
            # a relative PATH entry is looked in from the command's directory, as the
            # env -C that starts it will
            base = self.cwd or os.getcwd()
            search = (env if env is not None else os.environ).get("PATH", os.defpath)
            path = shutil.which(name, path=os.pathsep.join(
                os.path.join(base, part or ".") for part in search.split(os.pathsep))) or ""
            path = os.path.normpath(path) if path else ""
            if not path and not self.allow:
                return name   # not found: it fails to start, as without a policy
        if not self.allow:
            return path
        real = os.path.realpath(path) if path else ""
        for rule, rule_real in zip(self.allow, self._real_programs, strict=True):
            if real == rule_real and rule.allows(argv[1:]):
                # the rule's own path runs: a program that acts on the name it is called
                # by (busybox, xz/unxz, bash/rbash) is what the rule allowed, not its twin
                return rule.program
        raise Refused(f"{shlex.join(argv)[:200]!r} is not allowed by the channel's "
                      f"command policy (allow: "
                      f"{'; '.join(rule.text() for rule in self.allow)[:300]})")

    @functools.cached_property
    def _real_programs(self) -> tuple[str, ...]:
        return tuple(os.path.realpath(rule.program) for rule in self.allow)

    def launch(self, argv: list[str]) -> tuple[list[str], dict[str, str] | None]:
        """(argv to start, environment) that run argv under the policy; Refused if it
        may not run."""
        path = self.program(argv)
        return [*self._prefix, path, *argv[1:]], self.environment()

    @functools.cached_property
    def _prefix(self) -> tuple[str, ...]:
        """The helpers that apply the limits, the user and group and the directory,
        each exec'ing the next; Refused (not kept) when one is missing."""
        prefix: list[str] = []
        if self.limits:
            prefix += [tool("prlimit"), *(f"{LIMITS[name][0]}={value}:{value}"
                                          for name, value in self.limits), "--"]
        ids = self.ids()
        if ids is not None and ids != (os.geteuid(), os.getegid()):
            prefix += [tool("setpriv"), f"--reuid={ids[0]}", f"--regid={ids[1]}",
                       "--init-groups" if self.user else "--clear-groups", "--"]
        if self.cwd:
            prefix += [tool("env"), "-C", self.cwd, "--"]
        return tuple(prefix)


def rule_of(text: str, resolve: bool) -> Rule:
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise BadPolicy(f"command_policy.allow: {text!r}: {exc}") from None
    if not words:
        raise BadPolicy("command_policy.allow: an empty rule")
    program, patterns = words[0], tuple(words[1:])
    if ANY_REST in patterns[:-1]:
        raise BadPolicy(f"command_policy.allow: {text!r}: '...' can only be the last word")
    if "=" in program:   # env -C would read it as a variable
        raise BadPolicy(f"command_policy.allow: {program!r}: a program path without '='")
    if resolve:
        if "/" in program:
            found = program if os.path.isabs(program) and os.path.isfile(program) and \
                os.access(program, os.X_OK) else ""
        else:
            found = shutil.which(program) or ""
        if not found:
            raise BadPolicy(f"command_policy.allow: {program!r} is not an executable "
                            "(a name is looked for on PATH now, an absolute path must exist)")
        program = found
    elif not os.path.isabs(program):
        raise ValueError(f"a stored rule's program is not absolute: {program!r}")
    return Rule(program, patterns)


def tool(name: str) -> str:
    """An absolute path of a helper the policy applies itself with."""
    path = shutil.which(name, path="/usr/bin:/bin:/usr/sbin:/sbin")
    if path is None:
        raise Refused(f"the command policy needs {name}, which is not installed "
                      "(util-linux, coreutils)")
    return path
