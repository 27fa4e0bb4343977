"""Shared server runtime of both services: error mapping, health, lifecycle."""
