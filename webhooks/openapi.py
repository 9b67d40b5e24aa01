"""GET /api/openapi.json: the OpenAPI 3.1 document of the REST API, built from the same constants the
handlers check against (states, agents, sources, credential kinds, settings), so the two cannot drift
apart; tests/test_openapi.py has schemathesis call the running app with what the document allows."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from bot import __version__
from bot.catalog import AGENT_NAMES
from bot.credentials import KINDS
from bot.sessions import SOURCES
from bot.settings import KEYS
from bot.triggers import MAX_BEST_OF
from webhooks.api import LIST_FILTERS, MAX_AFTER, MAX_KEY, MAX_LIMIT, MAX_MODEL, MAX_PROMPT, STATES


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


NULLABLE_TEXT = {"type": ["string", "null"]}
NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}
SESSION_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string", "maxLength": 64}}
AGENT_PARAM = {"name": "agent", "in": "path", "required": True, "schema": {"type": "string", "enum": list(AGENT_NAMES)}}
IDEMPOTENCY = {"name": "Idempotency-Key", "in": "header", "required": False,
               "description": "makes a retry safe: the same key with the same request answers the first session",
               "schema": {"type": "string", "minLength": 1, "maxLength": MAX_KEY, "pattern": "^[\\x21-\\x7e]+$"}}
BAD_BODY = {"400": _error("a field is missing or malformed; `field` names it"),
            "415": _error("the body is not application/json")}


def _schemas() -> dict[str, Any]:
    settable = [key.name for key in KEYS if key.path]
    return {
        "Error": {"type": "object", "required": ["error"], "properties": {
            "error": {"type": "string", "description": "one sentence saying what is wrong and how to fix it"},
            "field": {"type": "string"}, "key": {"type": ["string", "null"]}}},
        "Session": {"type": "object", "required": ["id", "state", "prompt", "agent", "repo", "source"], "properties": {
            "id": {"type": "string"}, "state": {"type": "string", "enum": list(STATES)},
            "title": {"type": "string"}, "prompt": {"type": "string"}, "agent": {"type": "string"},
            "model": NULLABLE_TEXT, "repo": {"type": "string"}, "baseBranch": NULLABLE_TEXT, "branch": NULLABLE_TEXT,
            "commitSha": NULLABLE_TEXT,
            "pullRequest": {"oneOf": [{"type": "null"}, {"type": "object", "properties": {
                "number": {"type": "integer"}, "url": NULLABLE_TEXT}}]},
            "progress": {"type": "integer"}, "source": {"type": "string", "enum": list(SOURCES)},
            "requestedBy": NULLABLE_TEXT, "parentId": NULLABLE_TEXT, "sandboxSecurity": {"type": "boolean"},
            "keepAlive": {"type": "boolean"}, "error": NULLABLE_TEXT, "warning": NULLABLE_TEXT,
            "violationCount": {"type": "integer"}, "createdAt": NULLABLE_TIME, "startedAt": NULLABLE_TIME,
            "finishedAt": NULLABLE_TIME,
            "usage": {"type": "object", "description": "null where the agent (or the gateway) reported nothing",
                      "properties": {"inputTokens": {"type": ["integer", "null"]},
                                     "outputTokens": {"type": ["integer", "null"]},
                                     "costUsd": {"type": ["number", "null"]},
                                     "budgetUsd": {"type": ["number", "null"]}}},
            "sandboxApplied": {"type": ["boolean", "null"], "description": "GET of one session: whether the OS "
                               "sandbox applied (sandboxSecurity is what was asked); null before the agent started"},
            "workspace": {"type": ["string", "null"], "description": "GET of one ended session: the directory it "
                          "left on this host (keep alive, or work to push by hand); DELETE removes it"}}},
        "SessionPage": {"type": "object", "required": ["sessions", "cursor"], "properties": {
            "sessions": {"type": "array", "items": _ref("Session")},
            "cursor": {"type": ["string", "null"], "description": "send it back as `cursor` for the next page"}}},
        "NewSession": {"type": "object", "required": ["repo", "prompt"], "properties": {
            "repo": {"type": "string", "minLength": 1, "maxLength": 1024,
                     "description": "owner/name, an absolute path or a clone URL, as API_REPOS allows"},
            "prompt": {"type": "string", "minLength": 1, "maxLength": MAX_PROMPT},
            "agent": {"type": "string", "enum": list(AGENT_NAMES)},
            "model": {"type": "string", "maxLength": MAX_MODEL},
            "baseBranch": {"type": "string", "maxLength": 255}, "branch": {"type": "string", "maxLength": 255},
            "sandboxSecurity": {"type": "boolean"}, "keepAlive": {"type": "boolean"},
            "budget": {"type": "number", "exclusiveMinimum": 0, "maximum": 1_000_000,
                       "description": "the most the session may spend on its model API, in USD"},
            "idempotencyKey": {"type": "string", "maxLength": MAX_KEY},
            "agents": {"type": "array", "items": {"type": "string", "enum": list(AGENT_NAMES)}, "minItems": 2,
                       "maxItems": MAX_BEST_OF, "description": "best-of-N: one session per agent (repeats allowed), "
                       "each on a new branch, compared at /api/best-of/{group}; not with agent, model or branch"}}},
        "BestOfGroup": {"type": "object", "required": ["group", "sessions"], "properties": {
            "group": {"type": "string"}, "sessions": {"type": "array", "items": _ref("Session")}}},
        "BestOfComparison": {"type": "object", "required": ["group", "repo", "ended", "picked", "sessions"],
                             "properties": {
            "group": {"type": "string"}, "repo": {"type": "string"}, "source": {"type": "string"},
            "prompt": {"type": "string"}, "ended": {"type": "boolean"},
            "picked": {"type": ["string", "null"], "description": "the session whose work became the change"},
            "sessions": {"type": "array", "items": {"type": "object", "required": ["index", "id", "agent", "state"],
                                                    "properties": {
                "index": {"type": "integer"}, "id": {"type": "string"}, "agent": {"type": "string"},
                "state": {"type": "string", "enum": list(STATES)}, "branch": NULLABLE_TEXT, "commitSha": NULLABLE_TEXT,
                "files": {"type": ["string", "null"], "description": "git's summary, e.g. 2 files changed, ..."},
                "tests": {"type": ["string", "null"], "enum": ["passed", "failed", None]},
                "durationSeconds": {"type": ["number", "null"]}, "costUsd": {"type": ["number", "null"]},
                "violations": {"type": "integer"}, "error": NULLABLE_TEXT,
                "pullRequest": {"oneOf": [{"type": "null"}, {"type": "object", "properties": {
                    "number": {"type": "integer"}, "url": NULLABLE_TEXT}}]}}}}}},
        "BestOfPick": {"type": "object", "required": ["pick"], "properties": {
            "pick": {"oneOf": [{"type": "string", "minLength": 1, "maxLength": 64}, {"type": "integer"}],
                     "description": "the session's number in the group (1..N) or its agent, when only one ran it"}}},
        "BestOfPicked": {"type": "object", "required": ["group", "session", "pullRequest", "moved"], "properties": {
            "group": {"type": "string"}, "session": _ref("Session"),
            "pullRequest": {"oneOf": [{"type": "null"}, {"type": "object", "properties": {
                "number": {"type": "integer"}, "url": NULLABLE_TEXT, "created": {"type": "boolean"}}}],
                "description": "null for a repository without pull requests (a path or URL)"},
            "moved": {"type": ["string", "null"], "description": "a group on a pull request: the PR's branch, "
                      "fast-forwarded to the chosen commit"}}},
        "SessionChange": {"oneOf": [
            {"type": "object", "required": ["action"], "properties": {"action": {"const": "stop"}}},
            {"type": "object", "required": ["message"], "properties": {
                "message": {"type": "string", "minLength": 1, "maxLength": MAX_PROMPT},
                "agent": {"type": "string", "enum": list(AGENT_NAMES)},
                "model": {"type": "string", "maxLength": MAX_MODEL}}}]},
        "Violations": {"type": "object", "required": ["total", "violations"], "properties": {
            "total": {"type": "integer"}, "violations": {"type": "array", "items": {"type": "object", "properties": {
                "kind": {"type": "string"}, "resource": {"type": "string"}, "operation": {"type": "string"},
                "reason": NULLABLE_TEXT, "count": {"type": "integer"}, "firstAt": NULLABLE_TIME,
                "lastAt": NULLABLE_TIME}}}}},
        "Settings": {"type": "object", "required": ["settings"], "properties": {
            "configFile": NULLABLE_TEXT, "restartRequired": {"type": "array", "items": {"type": "string"}},
            "settings": {"type": "object", "additionalProperties": {"type": "object", "properties": {
                "value": {}, "locked": {"type": "boolean"}, "source": NULLABLE_TEXT, "live": {"type": "boolean"},
                "restartPending": {"type": "boolean"}}}}}},
        "SettingsChange": {"type": "object", "minProperties": 1, "propertyNames": {"enum": settable},
                           "description": "setting names and their new values; every one is checked first"},
        "Credentials": {"type": "object", "required": ["agent"], "properties": {
            "agent": {"type": "string"},
            "kinds": {"type": "array", "items": {"type": "string", "enum": list(KINDS)},
                      "description": "what this owner takes: subscription and api_key for an agent, "
                                     "github_pat for github (the PAT whose user authors commits)"},
            "stored": {"type": "array", "items": {"type": "string"}},
            "environment": {"type": "array", "description": "keys the server environment gives it: locked, "
                            "never shown", "items": {"type": "object", "properties": {
                                "name": {"type": "string"}, "source": NULLABLE_TEXT, "locked": {"type": "boolean"}}}},
            "login": {"type": "string", "description": "after storing a PAT: its GitHub login"},
            "removed": {"type": "integer"}}},
        "NewCredential": {"type": "object", "required": ["value"], "properties": {
            "kind": {"type": "string", "enum": list(KINDS)},
            "value": {"type": "string", "minLength": 1, "maxLength": 20_000}}},
        "Health": {"type": "object", "required": ["status", "version"], "properties": {
            "status": {"type": "string", "enum": ["ok", "degraded"]}, "version": {"type": "string"},
            "database": {"type": "object"}, "queue": {"type": "object"}, "sandbox": {"type": "object"},
            "sessions": {"type": "object", "properties": {"queued": {"type": "integer"},
                                                          "running": {"type": "integer"}}}}},
    }


def _paths() -> dict[str, Any]:
    session = _json(_ref("Session"), "the session")
    missing = _error("no such session")
    created = {"anyOf": [_ref("Session"), _ref("BestOfGroup")]}
    group = {"name": "group", "in": "path", "required": True, "schema": {"type": "string", "maxLength": 64}}
    no_group = _error("no such best-of-N group")
    list_params = [
        {"name": LIST_FILTERS[0], "in": "query", "schema": {"type": "string", "enum": list(STATES)}},
        {"name": "agent", "in": "query", "schema": {"type": "string", "enum": list(AGENT_NAMES)}},
        {"name": "source", "in": "query", "schema": {"type": "string", "enum": list(SOURCES)}},
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT,
                                                     "default": 50}},
        {"name": "cursor", "in": "query", "schema": {"type": "string"},
         "description": "the `cursor` of the previous page"}]
    return {
        "/api/health": {"get": {"operationId": "health", "security": [], "responses": {
            "200": _json(_ref("Health"), "every part answers"),
            "503": _json(_ref("Health"), "the database or the queue does not answer")}}},
        "/api/openapi.json": {"get": {"operationId": "openapi", "responses": {
            "200": _json({"type": "object"}, "this document")}}},
        "/api/session": {
            "get": {"operationId": "listSessions", "parameters": list_params, "responses": {
                "200": _json(_ref("SessionPage"), "newest first"),
                "400": _error("an unknown parameter or value, named with the valid ones")}},
            "post": {"operationId": "createSession", "parameters": [IDEMPOTENCY],
                     "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("NewSession")}}},
                     "responses": {"201": _json(created, "recorded and queued (with agents: the group)"),
                                   "200": _json(created, "what this Idempotency-Key made before"),
                                   **BAD_BODY,
                                   "422": _error("the Idempotency-Key was used for another request")}}},
        "/api/session/{id}": {
            "parameters": [SESSION_ID],
            "get": {"operationId": "getSession", "responses": {"200": session, "404": missing}},
            "patch": {"operationId": "changeSession", "parameters": [IDEMPOTENCY],
                      "requestBody": {"required": True,
                                      "content": {"application/json": {"schema": _ref("SessionChange")}}},
                      "responses": {"200": _json(_ref("Session"), "stopped, or the follow-up made before"),
                                    "201": _json(_ref("Session"), "the follow-up, queued"), **BAD_BODY,
                                    "404": missing, "422": _error("the Idempotency-Key was used for another request")}},
            "delete": {"operationId": "deleteSession", "responses": {
                "204": {"description": "deleted"}, "404": missing,
                "409": _error("still running, or follow-ups refer to it")}}},
        "/api/session/{id}/events": {"parameters": [SESSION_ID], "get": {
            "operationId": "sessionEvents",
            "parameters": [{"name": "Last-Event-ID", "in": "header",
                            "schema": {"type": "string", "pattern": "^[0-9]{1,9}$"}},
                           {"name": "after", "in": "query", "schema": {"type": "integer", "minimum": 0,
                                                                       "maximum": MAX_AFTER}}],
            "responses": {"200": {"description": "server-sent events until the session ends",
                                  "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                          "400": _error("Last-Event-ID is not a number"), "404": missing}}},
        "/api/session/{id}/violations": {"parameters": [SESSION_ID], "get": {
            "operationId": "sessionViolations", "responses": {"200": _json(_ref("Violations"), "counted"),
                                                              "404": missing}}},
        "/api/best-of/{group}": {"parameters": [group], "get": {
            "operationId": "getBestOf", "responses": {
                "200": _json(_ref("BestOfComparison"), "the group's sessions compared"), "404": no_group}}},
        "/api/best-of/{group}/pick": {"parameters": [group], "post": {
            "operationId": "pickBestOf",
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("BestOfPick")}}},
            "responses": {"200": _json(_ref("BestOfPicked"), "the pull request opened (or found open), or the "
                                       "pull request's branch moved"),
                          **BAD_BODY, "404": no_group,
                          "409": _error("that session pushed nothing, the pull request is a fork's or closed, "
                                        "or its branch moved since the sessions started"),
                          "502": _error("GitHub refused or did not answer"),
                          "503": _error("the group went through the GitHub App's installation, and this server "
                                        "has no GitHub App configured (GITHUB_APP_ID, GITHUB_PRIVATE_KEY_PATH)")}}},
        "/api/settings": {
            "get": {"operationId": "getSettings", "responses": {"200": _json(_ref("Settings"), "in force")}},
            "put": {"operationId": "putSettings",
                    "requestBody": {"required": True,
                                    "content": {"application/json": {"schema": _ref("SettingsChange")}}},
                    "responses": {"200": _json(_ref("Settings"), "written and in force"), **BAD_BODY,
                                  "409": _error("locked by the environment")}}},
        "/api/credentials/{agent}": {
            "parameters": [AGENT_PARAM],
            "get": {"operationId": "getCredentials", "responses": {
                "200": _json(_ref("Credentials"), "the kinds stored (values are never returned)"),
                "400": _error("unknown agent"), "404": _error("unknown agent")}},
            "put": {"operationId": "putCredentials",
                    "requestBody": {"required": True,
                                    "content": {"application/json": {"schema": _ref("NewCredential")}}},
                    "responses": {"200": _json(_ref("Credentials"), "sealed and stored"), **BAD_BODY,
                                  "404": _error("unknown agent"),
                                  "502": _error("GitHub did not answer the PAT check; nothing was stored")}},
            "delete": {"operationId": "deleteCredentials",
                       "parameters": [{"name": "kind", "in": "query",
                                       "schema": {"type": "string", "enum": list(KINDS)}}],
                       "responses": {"200": _json(_ref("Credentials"), "how many were removed"),
                                     "400": _error("unknown agent or kind"), "404": _error("unknown agent")}}},
        "/api/sesame/{path}": {"get": {
            "operationId": "sesameApi",
            "parameters": [{"name": "path", "in": "path", "required": True,
                            "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]+$"}}],
            "responses": {"200": _json({}, "SESAME_API_URL's answer, passed on"),
                          "400": _error("not a Sesame API path"),
                          "502": _error("SESAME_API_URL is unreachable or answered something other than JSON"),
                          "default": _json({}, "SESAME_API_URL's status and JSON, passed on")}}},
    }


def document() -> dict[str, Any]:
    """The whole OpenAPI 3.1 document."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "Sesame", "version": __version__,
                 "description": "Sessions of coding agents in sandboxed workspaces: start, follow, stop."},
        "components": {"schemas": _schemas(),
                       "securitySchemes": {"basic": {"type": "http", "scheme": "basic",
                                                     "description": "when AUTH_PASSWORD is set; any username"}}},
        "security": [{"basic": []}, {}],
        "paths": _paths(),
    }


async def openapi(_request: web.Request) -> web.Response:
    return web.json_response(document())


def setup(app: web.Application) -> None:
    app.router.add_get("/api/openapi.json", openapi)
