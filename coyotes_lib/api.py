"""The HTTP API: ``make_app(api) -> Bottle`` mounts the routes of ``routes.py``, and
``make_push(api)`` answers the push routes alone, for the server's express lane.

Every reply is the Go daemon's envelope ``{"status_code", "message", "data"}``
with the matching HTTP status (``replies.py``); a Redis outage is a 503 and a
refused command a 500, never a traceback. The server in front of it, with its
guard and bounds, is in ``server.py``.
"""

from __future__ import annotations

import functools
import logging
import traceback

import bottle
import redis

from . import routes
from .replies import JSON_TYPE, Body, envelope, fail

log = logging.getLogger("coyotes.api")


def make_app(api: routes.Api) -> bottle.Bottle:
    """The API app, every route of ``routes.py`` over ``api``."""
    app = bottle.Bottle()
    # every route returns its JSON text already; bottle's JSON plugin would only wrap
    # each call (and Bottle(autojson=False) no longer turns it off)
    app.uninstall("json")

    def mount(method: str, path: str, route) -> None:
        app.route(path, method, functools.partial(route, api), name=route.__name__)

    mount("GET", "/health", routes.health)
    mount("GET", "/", routes.home)
    mount("GET", "/ui", routes.ui_root)
    mount("GET", "/ui/", routes.ui_file)
    mount("GET", "/ui/<path:path>", routes.ui_file)
    mount("GET", "/overview", routes.overview)
    mount("GET", "/openapi.json", routes.openapi)
    mount("GET", "/metrics", routes.metrics)
    mount("GET", "/channels", routes.channels)
    mount("POST", "/channels", routes.add_channel)
    mount("GET", "/channels/<name>", routes.channel)
    mount("PATCH", "/channels/<name>", routes.change_channel)
    mount("DELETE", "/channels/<name>", routes.delete_channel)
    mount("POST", "/channels/<name>/pause", routes.pause_channel)
    mount("POST", "/channels/<name>/resume", routes.resume_channel)
    mount("POST", "/channels/<name>", routes.push_task)
    mount("POST", "/channels/<name>/tasks", routes.push_task_v2)
    mount("DELETE", "/channels/<name>/tasks/<task_id>", routes.delete_channel_task)
    mount("GET", "/schedules", routes.list_schedules)
    mount("POST", "/schedules", routes.add_schedule)
    mount("GET", "/schedules/<name>", routes.get_schedule)
    mount("PUT", "/schedules/<name>", routes.replace_schedule)
    mount("DELETE", "/schedules/<name>", routes.delete_schedule)
    mount("POST", "/schedules/<name>/run", routes.run_schedule)
    mount("POST", "/schedules/<name>/enable", routes.enable_schedule)
    mount("POST", "/schedules/<name>/disable", routes.disable_schedule)
    mount("GET", "/nodes", routes.nodes)
    mount("POST", "/nodes/<node_id>/drain", routes.drain_node)
    mount("GET", "/tasks/<task_id>", routes.get_task)
    mount("GET", "/tasks/<task_id>/output", routes.task_output)
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
    mount("GET", "/dead-letters/<letter>", routes.dead_letter)
    mount("DELETE", "/dead-letters/<letter>", routes.delete_dead_letter)
    mount("POST", "/dead-letters/<letter>/requeue", routes.requeue_dead_letter)
    app.install(redis_outage)
    app.default_error_handler = on_error
    return app


def make_push(api: routes.Api):
    """The push routes (POST /channels/<name>, and /tasks with ``with_command``) as
    ``push(environ, name, with_command) -> (status, JSON text)`` for the server's
    express lane: the same route, replies and errors as through ``make_app``, without
    bottle's router, plugins and request objects."""
    def push(environ, name: str, with_command: bool) -> tuple[int, str]:
        path = environ["PATH_INFO"]
        try:
            try:
                data = routes.push(api, name, Body(environ), with_command)
                return 200, envelope(200, "ok", data)
            except redis.RedisError as exc:
                raise outage(exc, "POST", path) from None
        except bottle.HTTPError as error:   # bottle's own refusal, as its handler words it
            return error.status_code, error_text(error, "POST", path)
        except bottle.HTTPResponse as reply:   # fail(...)
            return reply.status_code, reply.body
        except Exception as exc:   # as bottle's catch-all and on_error answer it
            environ["wsgi.errors"].write(traceback.format_exc())
            error = bottle.HTTPError(500, "Internal Server Error", exc)
            return 500, error_text(error, "POST", path)
    return push


def redis_outage(callback):
    """A Redis outage is a 503 for the caller, not a traceback in the log."""
    def wrapper(*args, **kwargs):
        try:
            return callback(*args, **kwargs)
        except redis.RedisError as exc:
            return outage(exc, bottle.request.method, bottle.request.path)
    return wrapper


def outage(exc: redis.RedisError, method: str, path: str) -> bottle.HTTPResponse:
    """The reply to a request that Redis failed: out of memory is refused for now,
    as an outage is (503); a key of another type is a 500."""
    if isinstance(exc, redis.OutOfMemoryError):
        log.warning("api: %s %s: redis is out of memory (%s)", method, path, exc)
        return fail(503, f"redis is out of memory: {exc}")
    if isinstance(exc, redis.ResponseError):
        log.error("api: %s %s: redis refused a command (%s)", method, path, exc)
        return fail(500, f"redis refused a command: {exc}")
    log.warning("api: %s %s: redis unavailable (%s)", method, path, exc)
    return fail(503, f"redis unavailable: {exc}")


def on_error(error: bottle.HTTPError) -> str:
    bottle.response.content_type = JSON_TYPE
    return error_text(error, bottle.request.method, bottle.request.path)


def error_text(error: bottle.HTTPError, method: str, path: str) -> str:
    """The envelope of an error bottle raised (or of an exception it caught)."""
    if error.status_code >= 500:
        log.error("api: %s %s failed: %r", method, path, error.exception)
        message = "internal error"
    else:   # bottle's own other 4xx say why (a broken multipart body ...)
        message = {404: "not found", 405: "method not allowed"}.get(error.status_code) \
            or str(error.body or "") or "bad request"
    return envelope(error.status_code, message)
