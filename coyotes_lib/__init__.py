"""Coyotes: you give me the command, I run it.

A gevent daemon that moves command lines from Redis queues (channels) to
worker pools and runs them, a fixed number at a time per channel, without a
shell. ``coyotes.py`` parses the command line; ``daemon.run`` does the rest.
"""

__version__ = "2.0.0"
