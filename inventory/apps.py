import os

from django.apps import AppConfig

# Pools a forked child inherited from its parent, kept referenced so they are never finalized
# (see _forget_inherited_pools).
_inherited_pools: list = []


def _forget_inherited_pools() -> None:
    """After a fork, drop the PostgreSQL connection pools the parent had open.

    The django-q2 worker forks its task processes. A pool (shopper.settings: OPTIONS["pool"])
    does not survive a fork: its maintenance threads are gone, and its connections share their
    sockets with the parent's. The child starts pools of its own instead; the inherited ones stay
    referenced here, because finalizing them would send the server a goodbye on the parent's
    sockets.
    """
    from django.db import connections
    from django.db.backends.postgresql.base import DatabaseWrapper

    _inherited_pools.extend(DatabaseWrapper._connection_pools.values())
    DatabaseWrapper._connection_pools.clear()
    for conn in connections.all(initialized_only=True):
        if conn.vendor == "postgresql" and conn.connection is not None:
            _inherited_pools.append(conn.connection)  # the parent's, borrowed when it forked
            conn.connection = None


class InventoryConfig(AppConfig):
    name = "inventory"
    verbose_name = "Inventory"

    def ready(self) -> None:
        # Here because the in-memory menu and the pool are this app's performance work; the
        # hook concerns every process that forks after Django is set up (the worker).
        os.register_at_fork(after_in_child=_forget_inherited_pools)
