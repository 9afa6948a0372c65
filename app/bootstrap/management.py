"""RabbitMQ's management API client (queue health on the dashboard), from the composition root.

The client is an adapter (app/adapters/rabbit_management.py); entrypoints reach adapters only
through app.bootstrap.
"""

from __future__ import annotations

from app.adapters.rabbit_management import ManagementUnavailable, RabbitManagement

__all__ = ["ManagementUnavailable", "RabbitManagement"]
