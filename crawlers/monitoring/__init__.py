"""Prometheus metrics of Hydra's processes (documented in docs/metrics.md).

``worker``: the metrics a task worker exposes, fed from its Scrapy stats;
``services``: the ``/metrics`` app the controller and scheduler mount;
``sd_file``: the file-based service discovery through which Prometheus finds workers.
Nothing here imports a spider, a pipeline or a service.
"""

from __future__ import annotations
