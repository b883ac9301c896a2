"""The user-profile API of perflab in FastAPI: the first external peer.

One program, two variants chosen by the first argument:

- ``naive``: what a first FastAPI service often looks like, and the study's baseline:
  a new database connection per request, statements sent ad hoc (asyncpg's statement
  cache off), the default asyncio event loop, uvicorn's pure-Python h11 parser and
  FastAPI's own JSON encoding.
- ``tuned``: an asyncpg pool of ``--pool-size`` connections whose statements are
  prepared once per connection (asyncpg's statement cache), uvloop, the httptools
  parser, and replies encoded with orjson.

Both follow perflab's API contract (docs/api.md) as far as FastAPI allows;
docs/peers.md ("The FastAPI peer") lists the differences. One process, one
worker: the lab pins it to the server's CPU like the Rust server.
"""

import argparse
import asyncio
import datetime
import json
import os
import sys

import asyncpg
import orjson
import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

SELECT_USER = "SELECT id, name, email, updated_at, version FROM users WHERE id = $1"
UPDATE_EMAIL = (
    "UPDATE users SET email = $2, updated_at = now(), version = version + 1 "
    "WHERE id = $1 RETURNING id, name, email, updated_at, version"
)
EMAIL_MAX_BYTES = 254
BODY_MAX_BYTES = 4096
DB_TIMEOUT_S = 2.0
ID_MAX = 2**63 - 1


class ApiError(Exception):
    """One error of the contract: a status and a stable sentence."""

    def __init__(self, status, reason, headers=None):
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers or {}


def unavailable():
    return ApiError(503, "database unavailable", {"Retry-After": "1"})


UTC = datetime.timezone.utc
INFINITY = datetime.datetime.max.replace(tzinfo=UTC)   # asyncpg's 'infinity'
MINUS_INFINITY = datetime.datetime.min.replace(tzinfo=UTC)

# Errors that mean the database cannot answer now (down, restarting, out of
# connections, the link broken or silent): a 503, as the contract says.
UNAVAILABLE = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.OperatorInterventionError,
    asyncpg.InsufficientResourcesError,
    asyncpg.CannotConnectNowError,
    asyncpg.QueryCanceledError,
)


def timestamp(value):
    """RFC 3339 with microseconds in UTC, as the Rust server writes it (years 0001-9999,
    zero-padded; the infinities as PostgreSQL writes them)."""
    if value == INFINITY:
        return "infinity"
    if value == MINUS_INFINITY:
        return "-infinity"
    v = value.astimezone(UTC)
    return (f"{v.year:04d}-{v.month:02d}-{v.day:02d}T{v.hour:02d}:{v.minute:02d}:"
            f"{v.second:02d}.{v.microsecond:06d}Z")


def profile(row):
    return {
        "id": row["id"],
        "name": row["name"],
        "email": row["email"],
        "updated_at": timestamp(row["updated_at"]),
        "version": row["version"],
    }


def parse_id(raw):
    if not raw.isascii() or not raw.isdigit():
        raise ApiError(400, "id must be a positive integer")
    value = int(raw)
    if value < 1 or value > ID_MAX:
        raise ApiError(400, "id must be a positive integer")
    return value


def validate_email(email):
    if email == "":
        return "email must not be empty"
    if len(email.encode()) > EMAIL_MAX_BYTES:
        return f"email is longer than {EMAIL_MAX_BYTES} bytes"
    if any(c.isspace() for c in email):
        return "email must not contain whitespace"
    if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in email):
        return "email must not contain control characters"
    local, at, domain = email.partition("@")
    if not at:
        return "email must contain `@`"
    if not local or not domain:
        return "email needs text on both sides of `@`"
    return None


def check_content_type(content_type):
    essence = (content_type or "").split(";")[0].strip().lower()
    if essence != "application/json":
        raise ApiError(415, "content type must be application/json")


async def read_body(request):
    """The body, refused with 413 past 4 KiB without reading the rest."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > BODY_MAX_BYTES:
        raise ApiError(413, "body is larger than 4 KiB")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > BODY_MAX_BYTES:
            raise ApiError(413, "body is larger than 4 KiB")
    return body


def parse_patch(body):
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "body is not valid JSON") from None
    if not isinstance(value, dict) or set(value) != {"email"} or not isinstance(value["email"], str):
        raise ApiError(400, "body must be {\"email\": \"...\"}")
    problem = validate_email(value["email"])
    if problem:
        raise ApiError(422, problem)
    return value["email"]


class Store:
    """Runs one statement on a connection from `acquire`, given back by `release`;
    the database's unavailability is a 503."""

    async def run(self, sql, *args):
        try:
            conn = await self.acquire()
        except (*UNAVAILABLE, asyncpg.PostgresError):
            raise unavailable() from None
        try:
            return await conn.fetchrow(sql, *args)
        except UNAVAILABLE:
            raise unavailable() from None
        finally:
            await self.release(conn)


class Naive(Store):
    """A connection per request, statements not kept."""

    def __init__(self, dsn):
        self.dsn = dsn

    async def start(self):
        pass

    async def stop(self):
        pass

    async def acquire(self):
        return await asyncpg.connect(
            self.dsn, timeout=DB_TIMEOUT_S, command_timeout=DB_TIMEOUT_S,
            statement_cache_size=0,
        )

    async def release(self, conn):
        try:
            await conn.close(timeout=DB_TIMEOUT_S)
        except Exception:  # the answer stands; the connection is dropped
            conn.terminate()


class Tuned(Store):
    """A pool whose connections prepare each statement once."""

    def __init__(self, dsn, size):
        self.dsn = dsn
        self.size = size
        self.pool = None

    async def start(self):
        self.pool = await asyncpg.create_pool(
            self.dsn, min_size=self.size, max_size=self.size,
            command_timeout=DB_TIMEOUT_S,
        )

    async def stop(self):
        if self.pool is not None:
            await self.pool.close()

    async def acquire(self):
        return await self.pool.acquire(timeout=DB_TIMEOUT_S)

    async def release(self, conn):
        await self.pool.release(conn)


def make_app(db, encode):
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

    def reply(status, body, headers=None):
        return Response(encode(body), status_code=status, headers=headers,
                        media_type="application/json")

    @app.exception_handler(ApiError)
    async def api_error(_request, e):
        return reply(e.status, {"error": e.reason}, e.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request, e):
        reason = {404: "not found", 405: "method not allowed"}.get(e.status_code, str(e.detail))
        return reply(e.status_code, {"error": reason}, getattr(e, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(_request, _e):
        return reply(400, {"error": "bad request"})

    @app.on_event("startup")
    async def startup():
        await db.start()

    @app.on_event("shutdown")
    async def shutdown():
        await db.stop()

    @app.api_route("/healthz", methods=["GET", "HEAD"])
    async def healthz():
        return reply(200, {"status": "ok"})

    @app.api_route("/readyz", methods=["GET", "HEAD"])
    async def readyz():
        await db.run("SELECT 1 AS one")
        return reply(200, {"status": "ready"})

    @app.api_route("/users/{raw_id}", methods=["GET", "HEAD"])
    async def get_user(raw_id: str):
        row = await db.run(SELECT_USER, parse_id(raw_id))
        if row is None:
            raise ApiError(404, "no such user")
        return reply(200, profile(row))

    @app.patch("/users/{raw_id}")
    async def patch_user(raw_id: str, request: Request):
        user_id = parse_id(raw_id)
        check_content_type(request.headers.get("content-type"))
        email = parse_patch(await read_body(request))
        row = await db.run(UPDATE_EMAIL, user_id, email)
        if row is None:
            raise ApiError(404, "no such user")
        return reply(200, profile(row))

    @app.api_route("/users/{raw_id}",
                   methods=["POST", "PUT", "DELETE", "OPTIONS", "TRACE", "CONNECT"])
    async def other_method(raw_id: str):
        raise ApiError(405, "method not allowed", {"Allow": "GET, HEAD, PATCH"})

    @app.api_route("/version", methods=["GET", "HEAD"])
    async def version():
        return reply(200, {"name": "perflab-fastapi", "features": []})

    return app


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variant", choices=["naive", "tuned"])
    parser.add_argument("--port", type=int, required=True)
    # In a pod LISTEN_ADDR (the manifests' 0.0.0.0:8080) says where to listen.
    default_host = os.environ.get("LISTEN_ADDR", "127.0.0.1:0").rsplit(":", 1)[0]
    parser.add_argument("--host", default=default_host)
    # Best through the environment: a command line is visible to every user.
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL"))
    parser.add_argument("--pool-size", type=int, default=16)
    args = parser.parse_args(argv)
    if not args.database_url:
        parser.error("give --database-url or DATABASE_URL")
    if args.variant == "naive":
        db, encode = Naive(args.database_url), lambda v: json.dumps(v).encode()
        loop, http = "asyncio", "h11"
    else:
        db, encode = Tuned(args.database_url, args.pool_size), orjson.dumps
        loop, http = "uvloop", "httptools"
    # SIGTERM ends uvicorn's serving cleanly (exit 0), as the lab and Kubernetes stop it.
    uvicorn.run(
        make_app(db, encode), host=args.host, port=args.port, loop=loop, http=http,
        log_level="warning", access_log=False,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
