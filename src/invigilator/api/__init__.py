"""The HTTP API: an app factory, staff and candidate routes, problem+json errors."""
