"""Reading from the warehouse: the IDs to fetch, page by page.

``read_ids("bigquery://project/dataset.table?column=tcg_id")`` yields the distinct
values of a column; ``read_ids("bigquery://project?query=SELECT ...")`` the first
column of a query. Both as lists of strings, one list per page.
"""

from __future__ import annotations

from crawlers.warehouse.bigquery_ids import read_ids, read_ids_async

__all__ = ["read_ids", "read_ids_async"]
