"""Route modules: health, analytics, admin (the dashboard), staff, candidate, webhooks, demo.

Each module's routes are built once, when it is imported, and every app adds those same route
objects (api/app.py). Their operationIds are the route functions' names, so generated clients
read well (`start_session`, not `start_session_api_v1_sessions_post`)."""

from __future__ import annotations

from fastapi.routing import APIRoute


def operation_id(route: APIRoute) -> str:
    return route.name
