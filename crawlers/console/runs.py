"""Placeholder: filled in by the runs pages' change."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import APIRouter

if TYPE_CHECKING:
    from crawlers.console.app import Console


def router(console: Console) -> APIRouter:
    return APIRouter()
