"""Long-running processes that are not spiders; each is a ``scrapy <command>``."""
