"""The client: validation before any write, sync and async, own connection or the caller's."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import anyio
import psycopg
import pytest
from psycopg.rows import DictRow
from pydantic import BaseModel

from ledger.client import AsyncClient, Client, JobRequest
from ledger.errors import InvalidArguments, UnknownKind
from ledger.kinds import Registry, builtin_registry
from ledger.models import Limit
from ledger.store import Store

from .conftest import count_events


class Email(BaseModel):
    to: str
    retries: int = 0


def registry() -> Registry:
    r = builtin_registry()
    r.kind("email", args=Email, queue="mail", priority=2, max_attempts=7)(lambda ctx: None)
    return r


def test_enqueue_uses_the_kinds_options_and_validated_args(db_url: str, store: Store) -> None:
    with Client(db_url, registry=registry()) as client:
        job_id = client.enqueue("email", {"to": "a@example.org"})
        override = client.enqueue("email", Email(to="b@example.org"), queue="urgent", priority=0)
    job = store.job(job_id)
    assert job is not None
    assert (job.queue, job.priority, job.max_attempts, job.args) == (
        "mail",
        2,
        7,
        {"to": "a@example.org", "retries": 0},
    )
    other = store.job(override)
    assert other is not None and (other.queue, other.priority) == ("urgent", 0)


def test_an_unknown_kind_is_refused_listing_the_known_ones(db_url: str, conn: psycopg.Connection[DictRow]) -> None:
    with Client(db_url, registry=registry()) as client, pytest.raises(UnknownKind) as refused:
        client.enqueue("emial", {"to": "x"})
    assert str(refused.value) == (
        "unknown job kind 'emial'; known kinds: email, heartbeat, ledger.prune, ledger.rescue; register it with "
        "@default_registry.kind in your app module and name the module with --app, LEDGER_APP or [tool.ledger] app"
    )
    assert count_events(conn) == 0


def test_an_insert_only_client_enqueues_a_kind_it_has_no_code_for_still_checking_options_and_json(
    db_url: str, store: Store
) -> None:
    with Client(db_url, registry=registry(), insert_only=True) as client:
        # Its own kinds are validated as usual...
        with pytest.raises(InvalidArguments, match="field 'to': Field required"):
            client.enqueue("email", {})
        # ...options and JSON of the others too, before anything is written...
        with pytest.raises(InvalidArguments, match="field 'priority'"):
            client.enqueue("resize_image", {"w": 10}, priority=12)
        with pytest.raises(InvalidArguments, match=r"args\.w: nan is not a JSON number"):
            client.enqueue("resize_image", {"w": float("nan")})
        assert store.jobs() == []
        # ...and a kind it does not know goes in as given, with the defaults of ledger/defaults.py.
        job = client.enqueue("resize_image", {"w": "not checked here"})
    written = store.job(job)
    assert written is not None
    assert (written.kind, written.args, written.queue, written.priority, written.max_attempts) == (
        "resize_image", {"w": "not checked here"}, "default", 5, 25,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("args", "options", "field"),
    [
        ({}, {}, "field 'to': Field required"),
        ({"to": "x", "retries": "many"}, {}, "field 'retries'"),
        ({"to": "x"}, {"priority": 10}, "field 'priority'"),
        ({"to": "x"}, {"max_attempts": 0}, "field 'max_attempts'"),
        ({"to": "x"}, {"queue": "no spaces"}, "field 'queue'"),
        ({"to": "x"}, {"run_at": datetime(2030, 1, 1)}, "field 'run_at': must carry a time zone"),
    ],
)
def test_invalid_arguments_are_refused_naming_the_field_before_anything_is_written(
    db_url: str, conn: psycopg.Connection[DictRow], args: dict[str, object], options: dict[str, object], field: str
) -> None:
    with Client(db_url, registry=registry()) as client, pytest.raises(InvalidArguments, match=field):
        client.enqueue_many([{"kind": "heartbeat"}, {"kind": "email", "args": args, **options}])
    assert count_events(conn) == 0


def test_enqueue_many_returns_ids_in_order(db_url: str, store: Store) -> None:
    with Client(db_url, registry=registry()) as client:
        ids = client.enqueue_many([{"kind": "email", "args": {"to": str(i)}} for i in range(20)])
    assert ids == sorted(ids)
    assert [store.job(i).args["to"] for i in ids] == [str(i) for i in range(20)]  # type: ignore[union-attr]


def test_async_enqueue_on_its_own_connection_and_in_the_callers_transaction(db_url: str, store: Store) -> None:
    async def main() -> tuple[int, int]:
        client = AsyncClient(db_url, registry=registry())
        own = await client.enqueue("email", {"to": "async"})
        async with await psycopg.AsyncConnection.connect(db_url) as caller:
            async with caller.transaction():
                joined = await client.enqueue("heartbeat", conn=caller)
            async with caller.transaction():
                await client.enqueue("heartbeat", conn=caller)
                raise psycopg.Rollback()  # the job leaves with the caller's work
        await client.close()
        return own, joined

    own, joined = anyio.run(main)
    assert store.job(own) is not None and store.job(joined) is not None
    assert store.conn.execute("SELECT count(*) AS n FROM ledger.jobs").fetchone() == {"n": 2}


def test_a_batchs_error_names_the_jobs_by_position(db_url: str, conn: psycopg.Connection[DictRow]) -> None:
    jobs: list[dict[str, object]] = [{"kind": "email", "args": {"to": str(i)}} for i in range(10)]
    jobs[3] = {"kind": "email", "args": {"to": "x"}, "priority": 12}
    with Client(db_url, registry=registry()) as client:
        with pytest.raises(InvalidArguments) as bad_option:
            client.enqueue_many(jobs)
        assert str(bad_option.value).startswith("invalid job: jobs[3] field 'priority'")
        assert bad_option.value.fields == ["priority"]
        # The args of one kind are validated together: the message still points at the job.
        with pytest.raises(InvalidArguments) as bad_args:
            client.enqueue_many([{"kind": "heartbeat"}, {"kind": "email", "args": {"to": "a"}}, {"kind": "email"}])
        assert str(bad_args.value) == "invalid args for job kind 'email': jobs[2] field 'to': Field required"
        assert bad_args.value.fields == ["args.to"]
        # Many bad jobs: the first three are named, the rest counted.
        with pytest.raises(InvalidArguments, match=r"jobs\[2\] field 'to': Field required; and 97 more$"):
            client.enqueue_many([{"kind": "email"}] * 100)
    assert count_events(conn) == 0


def test_a_job_request_is_a_typed_dict_and_args_may_be_any_json(db_url: str, store: Store) -> None:
    with Client(db_url, registry=registry()) as client:
        [job_id] = client.enqueue_many([JobRequest(kind="email", args={"to": "ü \\u0000 [{"}, priority=1)])
    job = store.job(job_id)
    assert job is not None and (job.args, job.priority) == ({"to": "ü \\u0000 [{", "retries": 0}, 1)


def test_one_job_and_a_batch_write_the_same_job_and_the_same_chained_event(
    db_url: str, store: Store, conn: psycopg.Connection[DictRow]
) -> None:
    # One job goes to ledger.job_enqueue (scalars), a batch to ledger.job_enqueue_many (arrays):
    # two statements of one rule, so their rows must not differ in anything but ids and times.
    store.limit_set("kind:email", Limit(concurrency=2, key="to"))
    later = datetime.now(UTC) + timedelta(hours=1)
    job = {"kind": "email", "args": {"to": "a@example.org"}, "run_at": later}
    with Client(db_url, registry=registry()) as client:
        one = client.enqueue("email", {"to": "a@example.org"}, run_at=later, metadata={"by": "test"})
        many = client.enqueue_many([job, job], metadata={"by": "test"})
    timeless = "kind, queue, priority, args, state, attempt, max_attempts, run_at, limit_key, unique_key, version"
    rows = conn.execute(f"SELECT {timeless} FROM ledger.jobs WHERE id = ANY(%s) ORDER BY id", [[one, *many]]).fetchall()
    assert rows[0] == rows[1] == rows[2] and rows[0]["state"] == "scheduled" and rows[0]["limit_key"]
    events = [store.events_for_job(i) for i in (one, *many)]
    assert [(e.type, e.data, e.metadata) for e in events[0]] == [(e.type, e.data, e.metadata) for e in events[1]]
    assert events[0][0].data["limit_key"] == "kind:email|a@example.org"
    assert [row for row in store.events_verify() if row["job_id"] in (one, *many)] == []
