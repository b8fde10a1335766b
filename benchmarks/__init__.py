"""Throughput benchmarks: Hydra's ``prices`` worker against a plain Scrapy spider."""
