"""The HTTP API: ``make_app(...) -> Bottle`` mounts the routes of ``routes.py``.

Every reply is the Go daemon's envelope ``{"status_code", "message", "data"}``
with the matching HTTP status (``replies.py``); a Redis outage is a 503 and a
refused command a 500, never a traceback. The server in front of it, with its
guard and bounds, is in ``server.py``.
"""

from __future__ import annotations

import functools
import logging
import re
import sys
import traceback

import bottle
import redis

from . import routes
from .broker import Broker
from .config import Config
from .replies import JSON_TYPE, envelope, fail

log = logging.getLogger("coyotes.api")


def make_app(broker: Broker, config: Config, on_channel_added=None,
             not_ready=None, on_queued=None) -> bottle.Bottle:
    """The API app; ``on_channel_added(spec)`` lets the scheduler start a new channel now,
    ``on_queued(name)`` wakes a channel a task was pushed to, and ``not_ready()``
    says why the node is not ready yet ('' once it is)."""
    api = routes.Api(broker, config, on_channel_added, not_ready, on_queued)
    app = App()
    # every route returns its JSON text already; bottle's JSON plugin would only wrap
    # each call (and Bottle(autojson=False) no longer turns it off)
    app.uninstall("json")

    def mount(method: str, path: str, route) -> None:
        app.route(path, method, functools.partial(route, api), name=route.__name__)

    mount("GET", "/health", routes.health)
    mount("GET", "/", routes.home)
    mount("GET", "/openapi.json", routes.openapi)
    mount("GET", "/channels", routes.channels)
    mount("POST", "/channels", routes.add_channel)
    mount("GET", "/channels/<name>", routes.channel)
    mount("POST", "/channels/<name>", routes.push_task)
    mount("POST", "/channels/<name>/tasks", routes.push_task_v2)
    mount("DELETE", "/channels/<name>/tasks/<task_id>", routes.delete_channel_task)
    mount("GET", "/tasks/<task_id>", routes.get_task)
    mount("DELETE", "/tasks/<task_id>", routes.delete_task)
    mount("GET", "/channels/<name>/failed-tasks", routes.failed_tasks)
    mount("POST", "/channels/<name>/failed-tasks", routes.unfail_all)
    mount("DELETE", "/channels/<name>/failed-tasks", routes.unfail_all)
    mount("GET", "/channels/<name>/failed-tasks/<task_id>", routes.failed_task)
    mount("POST", "/channels/<name>/failed-tasks/<task_id>", routes.unfail_task)
    mount("DELETE", "/channels/<name>/failed-tasks/<task_id>", routes.unfail_task)
    mount("GET", "/delay-tasks", routes.delay_tasks)
    mount("GET", "/delay-tasks/<task_id>", routes.delay_task)
    mount("DELETE", "/delay-tasks/<task_id>", routes.delete_delay_task)
    mount("GET", "/dead-letters", routes.dead_letters)
    app.install(redis_outage)
    app.default_error_handler = on_error
    app.push_routes = {route.name: route for route in app.routes
                       if route.name in ("push_task", "push_task_v2")}
    return app


# the push routes' paths, as bottle's router reads them (<name> is [^/]+)
PUSH_PATH = re.compile(r"/channels/([^/]+)(/tasks)?")


class App(bottle.Bottle):
    """Bottle, with a shortcut for the calls producers make most: a POST to
    /channels/<name> or /channels/<name>/tasks goes straight to its route (no router,
    no hooks: there are none), and the route's ok() reply is sent without bottle's
    generic reply building. The request is bound as bottle binds it, so the route
    runs the same; a refusal or an error goes through the rest of bottle's wsgi
    (_cast, the error handler). What a client sees is the same."""

    push_routes: dict[str, bottle.Route]   # set once by make_app (bottle refuses twice)

    def __call__(self, environ, start_response):
        raw = environ.get("PATH_INFO", "")
        if environ.get("REQUEST_METHOD") == "POST" and raw.startswith("/channels/") \
                and getattr(self, "push_routes", None):
            try:   # as bottle's _handle decodes it
                path = raw.encode("latin1").decode("utf8", "ignore")
            except UnicodeError:
                path = ""
            match = PUSH_PATH.fullmatch(path)
            if match is not None:
                route = self.push_routes["push_task_v2" if match[2] else "push_task"]
                environ["bottle.raw_path"], environ["PATH_INFO"] = raw, path
                return self.push(route, match[1], environ, start_response)
        return self.wsgi(environ, start_response)

    def push(self, route: bottle.Route, name: str, environ, start_response):
        """bottle's _handle (0.13.4) for a route already found, then the reply."""
        environ["bottle.app"] = self
        bottle.request.bind(environ)
        bottle.response.bind()
        environ["route.handle"] = environ["bottle.route"] = route
        environ["route.url_args"] = {"name": name}
        try:
            out = route.call(name=name)
        except bottle.HTTPResponse as exc:
            out = exc
        except (KeyboardInterrupt, SystemExit, MemoryError):
            raise
        except Exception as exc:
            if not self.catchall:
                raise
            stacktrace = traceback.format_exc()
            environ["wsgi.errors"].write(stacktrace)
            environ["wsgi.errors"].flush()
            environ["bottle.exc_info"] = sys.exc_info()
            out = bottle.HTTPError(500, "Internal Server Error", exc, stacktrace)
        response = bottle.response
        if isinstance(out, bottle.HTTPResponse):
            out.apply(response)
        elif isinstance(out, str) and response._status_code == 200 \
                and response._headers == OK_HEADERS and not response._cookies:
            body = out.encode("utf-8")   # the reply of ok(), as bottle would send it
            start_response("200 OK", [("Content-Type", JSON_TYPE),
                                      ("Content-Length", str(len(body)))])
            return [body]
        environ[HANDLED] = out
        return self.wsgi(environ, start_response)

    def _handle(self, environ):
        if HANDLED in environ:   # a push already handled: its outcome
            return environ.pop(HANDLED)
        return super()._handle(environ)


HANDLED = "coyotes.handled"   # environ key: what App.push's route returned
OK_HEADERS = {"Content-Type": [JSON_TYPE]}   # what ok() leaves in bottle's response


def redis_outage(callback):
    """A Redis outage is a 503 for the caller, not a traceback in the log."""
    def wrapper(*args, **kwargs):
        try:
            return callback(*args, **kwargs)
        except redis.OutOfMemoryError as exc:   # refused for now, as an outage is
            log.warning("api: %s %s: redis is out of memory (%s)", bottle.request.method,
                        bottle.request.path, exc)
            return fail(503, f"redis is out of memory: {exc}")
        except redis.ResponseError as exc:   # a key of another type
            log.error("api: %s %s: redis refused a command (%s)", bottle.request.method,
                      bottle.request.path, exc)
            return fail(500, f"redis refused a command: {exc}")
        except redis.RedisError as exc:
            log.warning("api: %s %s: redis unavailable (%s)", bottle.request.method,
                        bottle.request.path, exc)
            return fail(503, f"redis unavailable: {exc}")
    return wrapper


def on_error(error: bottle.HTTPError) -> str:
    bottle.response.content_type = "application/json; charset=utf-8"
    if error.status_code >= 500:
        log.error("api: %s %s failed: %r", bottle.request.method, bottle.request.path,
                  error.exception)
    if error.status_code >= 500:
        message = "internal error"
    else:   # bottle's own other 4xx say why (a broken multipart body ...)
        message = {404: "not found", 405: "method not allowed"}.get(error.status_code) \
            or str(error.body or "") or "bad request"
    return envelope(error.status_code, message)
