"""Coyotes' benchmark suite, run as ``python -m bench`` (``make bench``).

``__main__`` reads the options and runs the sections; ``context`` holds what
every section is given (the private Redis servers and the daemons, started by
``tests/harness.py``, shared with the tests; the peer given with ``--peer``);
``measure`` the measuring tools; ``runs`` a timed run of N tasks; one module per
section (``throughput``, ``latency``, ``push`` for section ``http``,
``status``, ``memory``, ``channels``, ``commands``, ``soak``); and ``report``
the report, written apart from the measuring.
"""
