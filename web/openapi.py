"""The OpenAPI document of the JSON API, served at /openapi.json (a test keeps it in step with the routes).

OpenAPI 3.1, whose schemas are JSON Schema 2020-12 as pydantic writes them:
the bodies (JobRequest per kind, the replay/cancel body) and the answers (Job,
Event) are derived from the pydantic models that validate and produce them,
so the rules are stated once, in ledger/models.py and the kinds' args models.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel, TypeAdapter

from ledger.kinds import Registry
from ledger.models import Event, Job, JobCount, JobRequest
from ledger.states import JobState

from .api import ActionBody

__all__ = ["document"]

REF = "#/components/schemas/{model}"

_ERROR = {"$ref": "#/components/schemas/Error"}


def _resp(description: str, schema: dict[str, Any] | None = None, media: str = "application/json") -> dict[str, Any]:
    out: dict[str, Any] = {"description": description}
    if schema is not None:
        out["content"] = {media: {"schema": schema}}
    return out


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "malformed request (bad JSON, not an object)",
        401: "API token missing, wrong, or not sent as `Authorization: Bearer` (when the server has one)",
        403: "a browser request from a page of another origin (`Origin`, `Sec-Fetch-Site`)",
        404: "no such job",
        409: "the job's state does not allow this",
        413: "body too large",
        415: "body is not JSON",
        422: "a field is invalid; `fields` names it",
        429: "too many wrong API tokens from this address; `Retry-After` says when to try again",
        503: "database unavailable",
    }
    return {str(c): _resp(text[c], _ERROR) for c in codes}


STATE = {"type": "string", "enum": [s.value for s in JobState]}
BIGINT = {"type": "integer", "minimum": 1, "maximum": 2**63 - 1}
TEXT_FILTER = {"type": "string", "maxLength": 200, "pattern": "^[^\\u0000]*$"}
JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": BIGINT}


def _schema(model: type[BaseModel], defs: dict[str, Any]) -> dict[str, Any]:
    """A model's serialization schema, its $defs moved into `defs` (the document's components)."""
    schema = model.model_json_schema(mode="serialization", ref_template=REF)
    defs.update(schema.pop("$defs", {}))
    return schema


def _job_request(registry: Registry, defs: dict[str, Any]) -> dict[str, Any]:
    """JobRequest as one variant per registered kind: the kind's name and its args model's schema."""
    base = TypeAdapter(JobRequest).json_schema(ref_template=REF)
    defs.update(base.pop("$defs", {}))  # Unique, JobState: what the request's own fields refer to
    variants = []
    for name, kind in sorted(registry.kinds.items()):
        args = kind.args_model.model_json_schema(ref_template=REF)
        defs.update(args.pop("$defs", {}))
        variant = copy.deepcopy(base)
        variant.pop("description", None)
        variant["title"] = f"JobRequest {name}"
        variant["properties"]["kind"] = {"type": "string", "enum": [name]}
        variant["properties"]["args"] = args
        # Absent args mean {}: required only when the kind's model has required fields
        # (schemathesis found a kind whose bare request the document allowed and the API refused).
        variant["required"] = ["kind", "args"] if args.get("required") else ["kind"]
        variants.append(variant)
    return {"oneOf": variants}


def document(registry: Registry) -> dict[str, Any]:
    """The document for an app serving `registry`'s kinds (the enqueue body depends on them)."""
    job_ref = {"$ref": "#/components/schemas/Job"}
    defs: dict[str, Any] = {}
    schemas = {
        "JobRequest": _job_request(registry, defs),
        "Job": _schema(Job, defs),
        "Event": _schema(Event, defs),
        "JobCount": _schema(JobCount, defs),
        "ActionBody": _schema(ActionBody, defs),
    }
    action = {"$ref": REF.format(model="ActionBody")}
    reason_body = {"required": False, "content": {"application/json": {"schema": action}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "ledger", "version": "1", "description": (
            "Jobs as an append-only history. When the server has an API token (LEDGER_API_TOKEN), every "
            "operation needs it as `Authorization: Bearer <token>`; /healthz and /metrics too, unless "
            "LEDGER_PUBLIC_OPS is on. Without one (development) nothing does.")},
        # Optional ({}): a development server has no token and asks for none.
        "security": [{"bearer": []}, {}],
        "paths": {
            "/healthz": {"get": {"summary": "Database health (public with LEDGER_PUBLIC_OPS)", "responses": {
                "200": _resp("database answers", {"type": "object"}),
                **_errors(401, 429),
                "503": _resp("database does not answer", {"type": "object"}),
            }}},
            "/debug/enqueue-test": {"get": {"summary": "Enqueue a heartbeat job", "responses": {
                "200": _resp("enqueued", {"type": "string"}, "text/plain"),
                **_errors(401, 429),
                "404": _resp("debug routes off (production)"),
                "500": _resp("enqueue failed: <reason>", {"type": "string"}, "text/plain"),
            }}},
            "/metrics": {"get": {"summary": "Prometheus metrics (public with LEDGER_PUBLIC_OPS)", "responses": {
                "200": _resp("text exposition format", {"type": "string"}, "text/plain"),
                **_errors(401, 429, 503),
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
                                           "next_before": {"type": ["integer", "null"]}},
                        }),
                        **_errors(401, 422, 429, 503),
                    },
                },
                "post": {
                    "summary": "Enqueue a job",
                    "requestBody": {"required": True, "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/JobRequest"}}}},
                    "responses": {
                        "201": _resp("enqueued", {"type": "object", "required": ["id"],
                                                  "properties": {"id": {"type": "integer"}}}),
                        **_errors(400, 401, 403, 413, 415, 422, 429, 503),
                    },
                },
            },
            "/api/jobs/{job_id}": {"get": {
                "summary": "One job and its full event timeline",
                "parameters": [JOB_ID],
                "responses": {
                    "200": _resp("the job", {"type": "object", "required": ["job", "events"], "properties": {
                        "job": job_ref, "events": {"type": "array", "items": {"$ref": "#/components/schemas/Event"}}}}),
                    **_errors(401, 404, 429, 503),
                },
            }},
            "/api/jobs/{job_id}/replay": {"post": {
                "summary": "Put a discarded or cancelled job back to work",
                "parameters": [JOB_ID], "requestBody": reason_body,
                "responses": {"200": _resp("replayed", {"type": "object", "properties": {"job": job_ref}}),
                              **_errors(400, 401, 403, 404, 409, 413, 415, 422, 429, 503)},
            }},
            "/api/jobs/{job_id}/cancel": {"post": {
                "summary": "Cancel a job that has not finished",
                "parameters": [JOB_ID], "requestBody": reason_body,
                "responses": {"200": _resp("cancelled", {"type": "object", "properties": {"job": job_ref}}),
                              **_errors(400, 401, 403, 404, 409, 413, 415, 422, 429, 503)},
            }},
            "/api/counts": {"get": {"summary": "Jobs by state and queue", "responses": {
                "200": _resp("counts", {"type": "object", "required": ["counts"], "properties": {
                    "counts": {"type": "array", "items": {"$ref": REF.format(model="JobCount")}}}}),
                **_errors(401, 429, 503),
            }}},
        },
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}, "schemas": {
            "Error": {"type": "object", "required": ["title"], "properties": {
                "title": {"type": "string"}, "description": {"type": "string"},
                "fields": {"type": "array", "items": {"type": "string"}}}},
            **schemas,
            **defs,
        }},
    }  # fmt: skip
