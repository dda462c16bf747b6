"""What /metrics says about the runbook catalog: how many are live, and which files did not load."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from runbot.runbooks.catalog import Catalog


class CatalogCollector(Collector):
    """Read at scrape time, so a reload (SIGHUP, /admin/reload) shows at once."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def collect(self) -> Iterator[GaugeMetricFamily]:
        loaded = GaugeMetricFamily("runbot_runbooks_loaded", "Runbooks live in this replica")
        loaded.add_metric([], len(self.catalog.all()))
        broken = GaugeMetricFamily("runbot_runbook_load_problems",
                                   "Problems of a runbook file that did not load (0 series: every file loaded)",
                                   labels=["file", "kept_last_good"])  # fmt: skip
        for b in self.catalog.broken:
            broken.add_metric([b.file, "true" if b.kept_version else "false"], b.problems)
        yield loaded
        yield broken
