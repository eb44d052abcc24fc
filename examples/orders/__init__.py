"""A small shop: a FastAPI app whose order and its receipt job commit (or roll back) together.

DATABASE_URL=postgresql://... uvicorn --factory examples.orders.app:create_app
DATABASE_URL=postgresql://... ledger worker --app examples.orders.worker --queues default=10,mail=2
"""
