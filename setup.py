"""Kept only because scrapyd-deploy builds its egg with ``setup.py bdist_egg``.

All metadata lives in pyproject.toml.
"""

from setuptools import setup

setup()
