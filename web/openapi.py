"""The OpenAPI document of the JSON API, served at /openapi.json (a test keeps it in step with the routes)."""

from __future__ import annotations

from typing import Any

from ledger.kinds import Registry
from ledger.states import JobState

__all__ = ["document"]

_ERROR = {"$ref": "#/components/schemas/Error"}


def _resp(description: str, schema: dict[str, Any] | None = None, media: str = "application/json") -> dict[str, Any]:
    out: dict[str, Any] = {"description": description}
    if schema is not None:
        out["content"] = {media: {"schema": schema}}
    return out


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "malformed request (bad JSON, not an object)",
        401: "API token missing or wrong",
        404: "no such job",
        409: "the job's state does not allow this",
        413: "body too large",
        415: "body is not JSON",
        422: "a field is invalid; `fields` names it",
        503: "database unavailable",
    }
    return {str(c): _resp(text[c], _ERROR) for c in codes}


STATE = {"type": "string", "enum": [s.value for s in JobState]}
BIGINT = {"type": "integer", "minimum": 1, "maximum": 2**63 - 1}
NO_NUL = "^[^\\u0000]*$"
TEXT_FILTER = {"type": "string", "maxLength": 200, "pattern": NO_NUL}
JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": BIGINT}
REASON_BODY = {
    "required": False,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    # no NUL: PostgreSQL text cannot hold it (refused with 422)
                    "reason": {"type": "string", "maxLength": 1000, "pattern": NO_NUL, "nullable": True},
                    "by": {"type": "string", "maxLength": 200, "pattern": NO_NUL, "nullable": True},
                },
            }
        }
    },
}


def _job_request(registry: Registry) -> tuple[dict[str, Any], dict[str, Any]]:
    """JobRequest as one variant per registered kind, each with its pydantic args schema;
    returns (schema, the $defs those args schemas need, for components)."""
    variants, defs = [], {}
    for name, kind in sorted(registry.kinds.items()):
        args = kind.args_model.model_json_schema(ref_template="#/components/schemas/{model}")
        defs.update(args.pop("$defs", {}))
        # Absent args mean {}: required only when the kind's model has required fields
        # (schemathesis found a kind whose bare request the document allowed and the API refused).
        required = ["kind", "args"] if args.get("required") else ["kind"]
        variants.append({
            "type": "object", "required": required, "additionalProperties": False,
            "properties": {
                "kind": {"type": "string", "enum": [name]}, "args": args,
                # null (or absent): the kind's default
                "queue": {"type": "string", "pattern": "^[A-Za-z0-9_.:-]{1,50}$", "nullable": True},
                "priority": {"type": "integer", "minimum": 0, "maximum": 9, "nullable": True},
                "max_attempts": {"type": "integer", "minimum": 1, "maximum": 1000, "nullable": True},
                "run_at": {"type": "string", "format": "date-time", "nullable": True},
            },
        })  # fmt: skip
    return {"oneOf": variants}, defs


def document(registry: Registry) -> dict[str, Any]:
    """The document for an app serving `registry`'s kinds (the enqueue body depends on them)."""
    job_ref = {"$ref": "#/components/schemas/Job"}
    job_request, arg_defs = _job_request(registry)
    return {
        "openapi": "3.0.3",
        "info": {"title": "ledger", "version": "1", "description": "Jobs as an append-only history."},
        "paths": {
            "/healthz": {"get": {"summary": "Database health", "responses": {
                "200": _resp("database answers", {"type": "object"}),
                "503": _resp("database does not answer", {"type": "object"}),
            }}},
            "/debug/enqueue-test": {"get": {"summary": "Enqueue a heartbeat job", "responses": {
                "200": _resp("enqueued", {"type": "string"}, "text/plain"),
                "404": _resp("debug routes off (production)"),
                "500": _resp("enqueue failed: <reason>", {"type": "string"}, "text/plain"),
            }}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {
                "200": _resp("text exposition format", {"type": "string"}, "text/plain"),
            }}},
            "/api/jobs": {
                "get": {
                    "summary": "List jobs, newest first, with keyset pagination",
                    "parameters": [
                        # blank means any state (what the dashboard's filter form sends)
                        {"name": "state", "in": "query", "schema": {**STATE, "enum": ["", *STATE["enum"]]}},
                        {"name": "kind", "in": "query", "schema": TEXT_FILTER},
                        {"name": "queue", "in": "query", "schema": TEXT_FILTER},
                        {"name": "before", "in": "query", "schema": BIGINT},
                        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500}},
                    ],
                    "responses": {
                        "200": _resp("a page of jobs", {
                            "type": "object", "required": ["jobs", "next_before"],
                            "properties": {"jobs": {"type": "array", "items": job_ref},
                                           "next_before": {"type": "integer", "nullable": True}},
                        }),
                        **_errors(422, 503),
                    },
                },
                "post": {
                    "summary": "Enqueue a job",
                    "requestBody": {"required": True, "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/JobRequest"}}}},
                    "responses": {
                        "201": _resp("enqueued", {"type": "object", "required": ["id"],
                                                  "properties": {"id": {"type": "integer"}}}),
                        **_errors(400, 401, 413, 415, 422, 503),
                    },
                },
            },
            "/api/jobs/{job_id}": {"get": {
                "summary": "One job and its full event timeline",
                "parameters": [JOB_ID],
                "responses": {
                    "200": _resp("the job", {"type": "object", "required": ["job", "events"], "properties": {
                        "job": job_ref, "events": {"type": "array", "items": {"$ref": "#/components/schemas/Event"}}}}),
                    **_errors(404, 503),
                },
            }},
            "/api/jobs/{job_id}/replay": {"post": {
                "summary": "Put a discarded or cancelled job back to work",
                "parameters": [JOB_ID], "requestBody": REASON_BODY,
                "responses": {"200": _resp("replayed", {"type": "object", "properties": {"job": job_ref}}),
                              **_errors(400, 401, 404, 409, 413, 415, 422, 503)},
            }},
            "/api/jobs/{job_id}/cancel": {"post": {
                "summary": "Cancel a job that has not finished",
                "parameters": [JOB_ID], "requestBody": REASON_BODY,
                "responses": {"200": _resp("cancelled", {"type": "object", "properties": {"job": job_ref}}),
                              **_errors(400, 401, 404, 409, 413, 415, 422, 503)},
            }},
            "/api/counts": {"get": {"summary": "Jobs by state and queue", "responses": {
                "200": _resp("counts", {"type": "object", "properties": {"counts": {"type": "array", "items": {
                    "type": "object", "properties": {
                        "state": {"type": "string"}, "queue": {"type": "string"},
                        "count": {"type": "integer"}, "exact": {"type": "boolean"}}}}}}),
                **_errors(503),
            }}},
        },
        "components": {"schemas": {
            "Error": {"type": "object", "required": ["title"], "properties": {
                "title": {"type": "string"}, "description": {"type": "string"},
                "fields": {"type": "array", "items": {"type": "string"}}}},
            "JobRequest": job_request,
            **arg_defs,
            "Job": {"type": "object", "properties": {
                "id": {"type": "integer"}, "kind": {"type": "string"}, "queue": {"type": "string"},
                "priority": {"type": "integer"}, "args": {"type": "object"},
                "state": STATE,
                "attempt": {"type": "integer"}, "max_attempts": {"type": "integer"},
                "run_at": {"type": "string", "format": "date-time"},
                "last_error": {"type": "string", "nullable": True}, "worker": {"type": "string", "nullable": True},
                "created_at": {"type": "string", "format": "date-time"},
                "attempted_at": {"type": "string", "format": "date-time", "nullable": True},
                "finalized_at": {"type": "string", "format": "date-time", "nullable": True},
                "updated_at": {"type": "string", "format": "date-time"}, "version": {"type": "integer"}}},
            "Event": {"type": "object", "properties": {
                "position": {"type": "integer"}, "job_id": {"type": "integer"}, "version": {"type": "integer"},
                "type": {"type": "string"}, "at": {"type": "string", "format": "date-time"},
                "data": {"type": "object"}, "metadata": {"type": "object"}}},
        }},
    }  # fmt: skip
