"""Seed 002's ETL service (``scrapy etl``): raw streams through the DataProcessor into sinks."""
