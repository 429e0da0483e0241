"""Invigilator: keeps online test sessions honest on PostgreSQL."""

__version__ = "0.1.0"
