"""Spiders and task kinds that exist only to test the task machinery's generality."""
