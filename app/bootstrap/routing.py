"""Loading routing plugins: entry points of the group ``jobtrail.routing``, by name.

The only place that imports plugins (the domain and the services see them as functions handed
in). A plugin's version is its distribution's version, recorded with every answer it gives.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib.metadata import EntryPoint, entry_points

from app.domain.policy import Policy
from app.domain.routing import ENTRY_POINT_GROUP
from app.services.routing import FleetWindow, LoadedPlugin, Router


def installed_plugins() -> dict[str, EntryPoint]:
    """The routing plugins installed in this environment, by name."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def load_plugins(names: Iterable[str]) -> dict[str, LoadedPlugin]:
    """Load the named plugins; raises ValueError naming an unknown or broken one."""
    installed = installed_plugins()
    loaded = {}
    for name in sorted(set(names)):
        entry = installed.get(name)
        if entry is None:
            known = ", ".join(sorted(installed)) or "none"
            raise ValueError(f"routing plugin {name!r} is not installed (installed: {known})")
        try:
            route = entry.load()
        except Exception as exc:  # an import error of the plugin's own code
            raise ValueError(f"routing plugin {name!r} does not load: {exc}") from exc
        if not callable(route):
            raise ValueError(f"routing plugin {name!r} ({entry.value}) is not a function")
        version = entry.dist.version if entry.dist is not None else "unknown"
        loaded[name] = LoadedPlugin(route=route, version=version)
    return loaded


def build_router(
    policy: Policy, only: str | None = None, fleet: FleetWindow | None = None
) -> Router | None:
    """A router for the plugins the policy names, or asking just ``only`` about every job;
    None if there are none. ``fleet`` (default: an empty live window) is what they are shown."""
    names = {only} if only is not None else policy.routing_plugins()
    if not names:
        return None
    return Router(load_plugins(names), fleet=fleet or FleetWindow(), only=only)
