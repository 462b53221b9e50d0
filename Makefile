# Coyotes: the two commands a newcomer needs are `make run` and `make test`.
# Both create (or refresh, when a requirements file changed) the virtualenv
# in .venv by themselves.
#
#   make run     [REDIS=host:port] [ARGS='-concurrent 10 -debug']
#   make test    [PYTEST_ARGS='-k php -x'] [TEST_JOBS=4 | 0 for one process]
#   make lint
#   make build   [OUT=bin/coyotes] [SHEBANG='/usr/bin/env python3']
#   make install [PREFIX=/usr/local] [DESTDIR=]
#   make clean   (build products; `make distclean` also removes .venv)
#   make bench   [BENCH_ARGS='--quick' | '--only throughput --tasks 2000'] [PEER=path/to/coyotes-go]
#   make screenshots  (the dashboard's pictures in docs/images, taken by its browser tests)

PYTHON  ?= python3
VENV    := .venv
STAMP   := $(VENV)/.requirements.stamp
REDIS   ?= 127.0.0.1:6379
ARGS    ?=
PYTEST_ARGS ?=
TEST_JOBS ?= 4
OUT     ?= bin/coyotes
# The zipapp holds gevent's compiled extensions, so it needs the Python it was
# built with (same minor version) under this name on the target machine.
SHEBANG ?= /usr/bin/env python3
PREFIX  ?= /usr/local
# Bundled whatever Python builds: redis-py needs async-timeout on Python
# < 3.11.3, and Debian 12's /usr/bin/python3 is 3.11.2.
BUNDLE_EXTRA := async-timeout==5.0.1
# The benchmark suite has its own virtualenv (matplotlib for the plot), so that
# `make test` and .venv stay as they are. `python -m bench -h` lists BENCH_ARGS.
BENCH_VENV  := .bench/venv
BENCH_STAMP := $(BENCH_VENV)/.requirements.stamp
BENCH_ARGS  ?=
# Another daemon taking the Go original's flags, measured beside Coyotes in the same rounds.
PEER        ?=
SOURCES := coyotes.py $(wildcard coyotes_lib/*.py coyotes_lib/ui/*) pyproject.toml requirements.txt

.PHONY: venv run test lint build install clean distclean bench screenshots

venv: $(STAMP)

# Rebuilt whenever a requirements file is newer than the stamp.
$(STAMP): requirements.txt requirements-dev.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

run: $(STAMP)
	REDIS='$(REDIS)' ARGS='$(ARGS)' bash scripts/run.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest -n $(TEST_JOBS) --dist loadfile $(PYTEST_ARGS)

build: $(OUT)

# One executable file (a shiv zipapp) carrying coyotes and its pinned
# dependencies. On first run it unpacks them to ~/.shiv (or $SHIV_ROOT) and
# compiles them once (--compile-pyc), so no start compiles them again.
# It is built from a copy of the sources beside the output (OUT.src, removed
# after): setuptools writes build/ and coyotes.egg-info next to what it builds,
# where a stale build/lib would be reused and two builds at once would delete
# each other's. The same OUT gives the same file (--reproducible). The path is
# absolute: pip would read a bare name as a package to fetch from the index.
$(OUT): $(STAMP) $(SOURCES)
	mkdir -p $(dir $(OUT))
	stage='$(abspath $(OUT)).src' && rm -rf "$$stage" && trap 'rm -rf "$$stage"' EXIT && \
	mkdir -p "$$stage/coyotes_lib/ui" && cp coyotes_lib/*.py "$$stage/coyotes_lib/" && \
	cp coyotes_lib/ui/* "$$stage/coyotes_lib/ui/" && \
	cp coyotes.py pyproject.toml requirements.txt "$$stage" && \
	$(VENV)/bin/shiv --console-script coyotes --output-file $(OUT) --python '$(SHEBANG)' \
		--compile-pyc --reproducible --quiet --disable-pip-version-check \
		-r requirements.txt $(BUNDLE_EXTRA) "$$stage"
	@echo "built $(OUT)"

install: $(OUT)
	install -D -m 0755 $(OUT) $(DESTDIR)$(PREFIX)/bin/coyotes

clean:
	rm -rf bin build dist *.egg-info .run
	find . -name __pycache__ -not -path './$(VENV)/*' -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)

$(BENCH_STAMP): requirements.txt requirements-bench.txt
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-bench.txt
	touch $@

# Starts its own redis-server (a free port, never 6379) and daemons; needs wrk
# for the HTTP figures (installed from Debian when we are root).
bench: $(BENCH_STAMP)
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && { apt-get update -qq && apt-get install -y -qq wrk; } || echo "wrk missing: HTTP figures will be skipped"; }
	$(BENCH_VENV)/bin/python -m bench $(if $(PEER),--peer '$(PEER)') $(BENCH_ARGS)

# The browser tests save every page; this keeps them as the docs' pictures. Chinese
# labels need a CJK font (fonts-noto-cjk, installed when we are root).
screenshots: $(STAMP)
	@fc-list :lang=zh | grep -q . || { [ "$$(id -u)" = 0 ] && apt-get install -y -qq fonts-noto-cjk; } || echo "no CJK font: Chinese pages will show boxes"
	COYOTES_SCREENSHOTS=$(abspath docs/images) $(VENV)/bin/python -m pytest -q -p no:cacheprovider tests/test_browser.py
