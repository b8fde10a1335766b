"""Channels (seed 003) and heal reviews: each channel's fetcher and version, its last jobs
and its site's versions (the heal history), and the review queue of heal jobs that ask
for a person (``requires_human_review``), with what they kept.

Approving a review commits its candidate to the fetchers repository, adds its version
and moves every channel of the broken version to it in one transaction
(:meth:`FetcherCatalog.decide`); rejecting records the decision and leaves every
mapping alone. A review's HAR is only ever a download (it may hold credentials the
capture did not recognise); its screenshots are shown.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated
from urllib.parse import quote

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, Response

from crawlers.console import channel_data as data
from crawlers.console.auth import Changer, Session, Viewer
from crawlers.fetchers.catalog import FetcherCatalog, ReviewClosed
from crawlers.fetchers.repository import RepositoryError

if TYPE_CHECKING:
    from crawlers.console.app import Console

JOBS_SHOWN = 20
ID_LENGTH = 255
NOTICES = {
    "approved": "Approved: the candidate is committed and every channel of the old version "
    "now runs it.",
    "rejected": "Rejected: the channels keep their fetcher.",
}


def router(console: Console) -> APIRouter:
    api = APIRouter()
    db = console.scheduler.db
    catalog = FetcherCatalog(db)
    deciding = asyncio.Lock()  # one decision at a time in this process (git, then the DB)

    async def review_of(job_id: str) -> data.Job:
        review = await asyncio.to_thread(data.job, db, job_id[:ID_LENGTH])
        if review is None or review.status != "requires_human_review":
            raise HTTPException(status_code=404, detail="no such review")
        return review

    @api.get("/channels")
    async def channels_page(request: Request, session: Viewer) -> HTMLResponse:
        found = await asyncio.to_thread(data.channels, db)
        return console.render(request, "channels.html", session, channels=found)

    @api.get("/channels/{channel_id}")
    async def channel_page(request: Request, session: Viewer, channel_id: str) -> HTMLResponse:
        channel_id = channel_id[:ID_LENGTH]
        mapped = await asyncio.to_thread(data.channel, db, channel_id)
        jobs = await asyncio.to_thread(data.jobs_of, db, channel_id, JOBS_SHOWN)
        if mapped is None and not jobs:
            raise HTTPException(status_code=404, detail="no such channel")
        versions: list[data.Version] = []
        if mapped is not None:
            site = mapped.fetcher.structure_id
            versions = await asyncio.to_thread(data.versions, db, console.config, site)
        # the mapping keeps no credentials, but a URL may carry a token in its query
        public = console.config.redactor.value(mapped.config) if mapped is not None else {}
        return console.render(
            request, "channel.html", session, channel_id=channel_id, mapped=mapped, jobs=jobs,
            versions=versions, public=public,
        )  # fmt: skip

    @api.get("/reviews")
    async def reviews_page(request: Request, session: Viewer) -> HTMLResponse:
        found = await asyncio.to_thread(data.open_reviews, db)
        return console.render(request, "reviews.html", session, reviews=found)

    @api.get("/reviews/{job_id}")
    async def review_page(
        request: Request, session: Viewer, job_id: str, done: str = ""
    ) -> HTMLResponse:
        return await show(request, session, await review_of(job_id), NOTICES.get(done, ""))

    async def show(
        request: Request, session: Session, review: data.Job, flash: str, status: int = 200
    ) -> HTMLResponse:
        folder = await asyncio.to_thread(data.review_folder, console.config, review)
        files = await asyncio.to_thread(data.review_files, folder)
        mapped = await asyncio.to_thread(data.channel, db, review.channel_id)
        return console.render(
            request, "review.html", session, review=review, mapped=mapped, flash=flash,
            hars=[f for f in files if f.endswith(".har")],
            images=[f for f in files if f.endswith(".png")],
            local=folder is not None, status=status,
        )  # fmt: skip

    @api.get("/reviews/{job_id}/files/{path:path}")
    async def review_file(session: Viewer, job_id: str, path: str) -> Response:
        review = await review_of(job_id)
        folder = await asyncio.to_thread(data.review_folder, console.config, review)
        try:
            found = await asyncio.to_thread(data.review_file, folder, path)
        except LookupError as exc:
            raise HTTPException(status_code=404, detail=f"not served: {exc}") from None
        suffix = found.suffix
        if suffix == ".har":  # never shown inline: it may hold credentials
            return FileResponse(
                found, media_type=data.CONTENT_TYPES[suffix], filename=found.name,
                content_disposition_type="attachment",
            )  # fmt: skip
        return FileResponse(found, media_type=data.CONTENT_TYPES[suffix])

    @api.post("/reviews/{job_id}/approve")
    async def approve(
        request: Request,
        session: Changer,
        job_id: str,
        attempt: Annotated[int, Form(ge=1, le=1000)],
    ) -> Response:
        review = await review_of(job_id)
        candidate = review.candidate(attempt)
        if candidate is None:
            raise HTTPException(status_code=404, detail="no such candidate")
        old_id = (candidate.get("old") or {}).get("id")
        old = await asyncio.to_thread(data.fetcher_by_id, db, int(old_id or 0))
        if old is None:
            raise HTTPException(status_code=409, detail="the broken version is gone")
        name, version, source = (
            candidate.get("name"),
            candidate.get("version"),
            candidate.get("source"),
        )
        if not (isinstance(name, str) and isinstance(version, int) and isinstance(source, str)):
            raise HTTPException(status_code=409, detail="the candidate was not kept whole")
        message = (
            f"{name}: {candidate.get('reason', 'heal')}, refused by validation, approved in "
            f"the console by {session.key_id} (review of job {review.job_id})"
        )
        async with deciding:
            if review.decision or (await review_of(job_id)).decision:
                return await refuse(request, session, review.job_id, "decided already")
            latest = await catalog.latest(old.structure_id)
            if latest is not None and latest.version >= version:
                why = f"version {latest.version} exists already (healed meanwhile)"
                return await refuse(request, session, review.job_id, why)
            try:
                await asyncio.to_thread(
                    data.commit_candidate, console.config, name, source, message
                )
            except RepositoryError as exc:
                why = f"the fetchers repository refused it: {exc}"
                return await refuse(request, session, review.job_id, why)
            decision = _decision("approved", session, name=name, version=version, attempt=attempt)
            try:
                await catalog.decide(review.job_id, decision, (old, name, version))
            except ReviewClosed as exc:
                return await refuse(request, session, review.job_id, str(exc))
        return console.back(f"{console.prefix}/reviews/{_q(review.job_id)}?done=approved")

    @api.post("/reviews/{job_id}/reject")
    async def reject(request: Request, session: Changer, job_id: str) -> Response:
        review = await review_of(job_id)
        async with deciding:
            try:
                await catalog.decide(review.job_id, _decision("rejected", session), None)
            except ReviewClosed as exc:
                return await refuse(request, session, review.job_id, str(exc))
        return console.back(f"{console.prefix}/reviews/{_q(review.job_id)}?done=rejected")

    async def refuse(request: Request, session: Session, job_id: str, why: str) -> HTMLResponse:
        review = await review_of(job_id)
        return await show(request, session, review, f"Nothing changed: {why}.", status=409)

    return api


def _decision(verdict: str, session: Session, **more: object) -> dict[str, object]:
    """What is kept of a decision: who (the key's fingerprint, never the key) and when."""
    return {
        "decision": verdict,
        "by": f"console:{session.key_id}",
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        **more,
    }


def _q(value: str) -> str:
    return quote(value, safe="")
