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

from ledger.kinds import SCHEDULE_NAME, Registry
from ledger.models import (
    QUEUE_PATTERN,
    RUN_AT,
    BulkResult,
    Event,
    Job,
    JobCount,
    JobRequest,
    JobView,
    QueueState,
    ThroughputRow,
)
from ledger.states import JobState

from .api import ActionBody
from .operators import FILTER_FIELDS, SCOPE_PATTERN, BulkBody, LimitBody, LimitView, QueueView, ScheduleView

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
        404: "no such job (or schedule, or limit)",
        409: "the job's (or queue's, schedule's) state does not allow this",
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
# Blank means any time (what a dashboard form sends), as for the other filters.
TIME_FILTER = {"anyOf": [{"type": "string", "maxLength": 0},
                         {"type": "string", "format": "date-time", "pattern": RUN_AT}]}  # fmt: skip
QUEUE = {"name": "queue", "in": "path", "required": True, "schema": {"type": "string", "pattern": QUEUE_PATTERN}}
SCHEDULE = {
    "name": "name",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": f"^{SCHEDULE_NAME}$"},
}
SCOPE = {"name": "scope", "in": "path", "required": True, "schema": {"type": "string", "pattern": SCOPE_PATTERN}}
# What a write with a body may answer besides its success.
WRITE_ERRORS = (400, 401, 403, 404, 413, 415, 422, 429, 503)


def _request(model: type[BaseModel], defs: dict[str, Any]) -> dict[str, Any]:
    """A request body's schema: the model's validation schema, its $defs moved into `defs`."""
    schema = model.model_json_schema(mode="validation", ref_template=REF)
    defs.update(schema.pop("$defs", {}))
    return schema


def _bulk_body(defs: dict[str, Any]) -> dict[str, Any]:
    """BulkBody, saying what its validator says too: at least one filter that is not null."""
    schema = _request(BulkBody, defs)
    schema["anyOf"] = [{"required": [f], "properties": {f: {"not": {"type": "null"}}}} for f in FILTER_FIELDS]
    return schema


def _limit_body(defs: dict[str, Any]) -> dict[str, Any]:
    """LimitBody, saying what the resource checks: a rate with its period, or a concurrency alone."""
    schema = _request(LimitBody, defs)
    schema["anyOf"] = [
        {"required": ["rate", "per"], "properties": {"rate": {"type": "integer"}, "per": {"type": "number"}}},
        {
            "required": ["concurrency"],
            "properties": {"concurrency": {"type": "integer"}, "rate": {"type": "null"}, "per": {"type": "null"}},
        },
    ]
    return schema


def _ok(description: str, name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return _resp(description, {"type": "object", "required": [name], "properties": {name: schema}})


def _post(
    summary: str, params: list[dict[str, Any]], body: dict[str, Any], ok: dict[str, Any], *errors: int
) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "parameters": params,
            "requestBody": body,
            "responses": {"200": ok, **_errors(*errors)},
        }
    }


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
        "JobView": _schema(JobView, defs),
        "JobCount": _schema(JobCount, defs),
        "ActionBody": _schema(ActionBody, defs),
        "BulkBody": _bulk_body(defs),
        "BulkResult": _schema(BulkResult, defs),
        "QueueView": _schema(QueueView, defs),
        "QueueState": _schema(QueueState, defs),
        "LimitBody": _limit_body(defs),
        "LimitView": _schema(LimitView, defs),
        "ScheduleView": _schema(ScheduleView, defs),
        "ThroughputRow": _schema(ThroughputRow, defs),
    }
    ref = {name: {"$ref": REF.format(model=name)} for name in schemas}
    bulk_result = {
        "allOf": [
            ref["BulkResult"],
            {"type": "object", "required": ["count"], "properties": {"count": {"type": "integer"}}},
        ]
    }
    bulk_body = {"required": True, "content": {"application/json": {"schema": ref["BulkBody"]}}}
    enqueued = {
        "type": "object",
        "required": ["id", "duplicate"],
        "properties": {"id": {"type": "integer"}, "duplicate": {"type": "boolean"}},
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
                        {"name": "since", "in": "query", "schema": TIME_FILTER,
                         "description": "ended (or, unfinished, enqueued) at or after this time"},
                        {"name": "error_like", "in": "query", "schema": TEXT_FILTER,
                         "description": "the last error contains this text (case blind, no wildcards)"},
                        {"name": "search", "in": "query", "schema": TEXT_FILTER,
                         "description": "the args or the last error contain this text (a customer id, say)"},
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
                        "201": _resp("enqueued: the new job's id (duplicate false)", enqueued),
                        "200": _resp("not enqueued: the request's `unique` rule (or its kind's) matched an existing "
                                     "job, whose id this is (duplicate true)", enqueued),
                        **_errors(400, 401, 403, 413, 415, 422, 429, 503),
                    },
                },
            },
            "/api/jobs/{job_id}": {"get": {
                "summary": "One job, its full event timeline, its latest progress and its result",
                "parameters": [JOB_ID],
                "responses": {
                    "200": _resp("the job", {"$ref": "#/components/schemas/JobView"}),
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
            "/api/jobs/replay": _post(
                "Replay every dead letter that matches the filter, as one act (one batch id in every event)",
                [], bulk_body, _resp("what was replayed, refused (with why) or changed meanwhile", bulk_result),
                *WRITE_ERRORS),
            "/api/jobs/cancel": _post(
                "Cancel every unfinished job (running ones too) that matches the filter, as one act",
                [], bulk_body, _resp("what was cancelled, refused (with why) or changed meanwhile", bulk_result),
                *WRITE_ERRORS),
            "/api/queues": {"get": {"summary": "Every queue: its jobs, backlog, pause (who, when, why) and limit",
                                    "responses": {"200": _ok("the queues", "queues",
                                                             {"type": "array", "items": ref["QueueView"]}),
                                                  **_errors(401, 429, 503)}}},
            "/api/queues/{queue}/pause": _post(
                "Pause a queue for every worker (running jobs finish; enqueueing goes on)", [QUEUE], reason_body,
                _ok("paused", "queue", ref["QueueState"]), *WRITE_ERRORS),
            "/api/queues/{queue}/resume": _post(
                "Resume a paused queue (409 when it is not paused)", [QUEUE], reason_body,
                _ok("resumed", "queue", ref["QueueState"]), *WRITE_ERRORS, 409),
            "/api/limits": {"get": {"summary": "Every declared limit", "responses": {
                "200": _ok("the limits", "limits", {"type": "array", "items": ref["LimitView"]}),
                **_errors(401, 429, 503)}}},
            "/api/limits/{scope}": {
                "put": {"summary": "Declare or change the limit of kind:<kind> or queue:<queue> (applies to jobs "
                                   "enqueued from then on)", "parameters": [SCOPE],
                        "requestBody": {"required": True, "content": {"application/json": {
                            "schema": ref["LimitBody"]}}},
                        "responses": {"200": _ok("declared", "limit", ref["LimitView"]), **_errors(*WRITE_ERRORS)}},
                "delete": {"summary": "Remove a scope's limit", "parameters": [SCOPE],
                           "responses": {"204": _resp("removed"), **_errors(401, 403, 404, 422, 429, 503)}},
            },
            "/api/schedules": {"get": {"summary": "Every cron schedule the workers declared, with its next run",
                                       "responses": {"200": _ok("the schedules", "schedules",
                                                                {"type": "array", "items": ref["ScheduleView"]}),
                                                     **_errors(401, 429, 503)}}},
            "/api/schedules/{name}/pause": _post(
                "Pause a schedule for every worker: its slots pass without a job", [SCHEDULE], reason_body,
                _ok("paused", "schedule", {"$ref": REF.format(model="ScheduleRow")}), *WRITE_ERRORS),
            "/api/schedules/{name}/resume": _post(
                "Resume a paused schedule; slots count from now (409 when it is not paused)", [SCHEDULE],
                reason_body, _ok("resumed", "schedule", {"$ref": REF.format(model="ScheduleRow")}),
                *WRITE_ERRORS, 409),
            "/api/throughput": {"get": {
                "summary": "Outcomes per minute and kind over the last hours, folded from the events",
                "parameters": [
                    {"name": "hours", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 192}},
                    {"name": "kind", "in": "query", "schema": TEXT_FILTER},
                ],
                "responses": {"200": _resp("minutes", {"type": "object", "required": ["since", "minutes"],
                                                       "properties": {"since": {"type": "string"}, "minutes": {
                                                           "type": "array", "items": ref["ThroughputRow"]}}}),
                              **_errors(401, 422, 429, 503)},
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
