"""The shop's web app: POST /orders stores the order and enqueues its receipt in one transaction."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException
from psycopg.conninfo import conninfo_to_dict
from pydantic import BaseModel
from sqlalchemy import URL, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from ledger.client import Client
from ledger.db import database_url

from .jobs import Receipt, registry

__all__ = ["Order", "create_app", "sqlalchemy_url"]


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str]
    item: Mapped[str]


class OrderIn(BaseModel):
    email: str
    item: str


class OrderOut(BaseModel):
    id: int
    receipt_job: int


def sqlalchemy_url(conninfo: str) -> URL:
    """A postgresql:// URL (or key=value conninfo) as SQLAlchemy's, on the psycopg 3 dialect: the one
    whose connection a job can join."""
    return URL.create("postgresql+psycopg", query=conninfo_to_dict(conninfo))


def create_app(url: str | None = None) -> FastAPI:
    """The app on `url` (default: DATABASE_URL, else ledger's embedded server)."""
    url = url or database_url()
    engine = create_engine(sqlalchemy_url(url))
    jobs = Client(url, registry=registry)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        Base.metadata.create_all(engine)
        yield
        jobs.close()
        engine.dispose()

    app = FastAPI(lifespan=lifespan)

    @app.post("/orders", status_code=201)
    def place_order(order: OrderIn) -> OrderOut:
        with Session(engine) as session, session.begin():
            row = Order(email=order.email, item=order.item)
            session.add(row)
            session.flush()  # the order's id, for the receipt
            # The job joins the session's transaction: it commits with the order, or not at all.
            job_id = jobs.enqueue("send_receipt", Receipt(order_id=row.id, email=row.email), conn=session)
            if order.item == "sold out":
                raise HTTPException(409, "sold out")  # rolls back the order and its receipt job
            return OrderOut(id=row.id, receipt_job=job_id)

    return app
