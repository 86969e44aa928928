"""Every built-in plugin, by type name. Explicit: adding a plugin is one import and one line."""

from __future__ import annotations

from extproc.scheduler.filters import locality, ready, stale
from extproc.scheduler.filters import outlier as outlier_filter
from extproc.scheduler.framework import PluginType
from extproc.scheduler.scorers import inflight, kv_cache, latency, load, lora, prefix, queue, session

PLUGINS: dict[str, PluginType] = {
    plugin.name: plugin
    for plugin in (
        ready.PLUGIN,
        outlier_filter.PLUGIN,
        stale.PLUGIN,
        locality.PLUGIN,
        load.PLUGIN,
        queue.PLUGIN,
        kv_cache.PLUGIN,
        inflight.PLUGIN,
        latency.PLUGIN,
        prefix.PLUGIN,
        session.PLUGIN,
        lora.PLUGIN,
    )
}
