"""Prometheus metrics of Hydra's processes (documented in docs/metrics.md).

``worker``: the metrics a task worker exposes, fed from its Scrapy stats;
``etl``: the metrics of an ETL processor (``scrapy etl``), added to per batch;
``endpoint``: the ``/metrics`` server of workers and ETL processors, in the SD file;
``services``: the ``/metrics`` app the controller and scheduler mount;
``sd_file``: the file-based service discovery through which Prometheus finds workers.
Nothing here imports a spider, a pipeline or a service.
"""

from __future__ import annotations
