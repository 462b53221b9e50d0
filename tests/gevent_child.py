"""Runs one test function in a child Python that gevent has patched, as the daemon
is, so the pytest process itself is never patched.

    python tests/gevent_child.py MODULE FUNCTION JSON_ARGS

prints ``MODULE.FUNCTION(*ARGS)`` as JSON; ``call`` starts it from a test.
"""

if __name__ == "__main__":   # before anything else is imported, as coyotes.py does
    from gevent import monkey

    monkey.patch_all()

import importlib
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def call(function, *args, timeout: float = 60, **popen):
    """``function(*args)`` (JSON in, JSON out) in a patched child Python."""
    out = subprocess.run([sys.executable, __file__, function.__module__, function.__name__,
                          json.dumps(args)], cwd=ROOT, capture_output=True, text=True,
                         timeout=timeout, **popen)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    sys.path.insert(0, str(ROOT))   # coyotes_lib from this work tree, as under pytest
    module, function, args = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    print(json.dumps(getattr(importlib.import_module(module), function)(*args)))


if __name__ == "__main__":
    main()
