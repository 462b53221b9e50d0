"""Coyotes' benchmark suite, run as ``python -m bench`` (``make bench``).

``__main__`` reads the options and runs the sections; ``context`` holds what
every section is given (the private Redis and the daemons come from
``tests/harness.py``, shared with the tests); ``measure`` the measuring tools;
``runs`` a timed run of N tasks; one module per section (``throughput``,
``latency``, ``push`` (section ``http``), ``status``, ``memory``, ``commands``, ``soak``); and
``report`` the report, written apart from the measuring.
"""
