"""Spiders: one per source (``prices``), later one per generated site."""
