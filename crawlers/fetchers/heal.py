"""Heal mode (seed 003's flow 3C): version N+1 of a broken fetcher, promoted only
after it works on every channel that version N serves.

First the channel's mapped version runs: when it passes (another heal task of
the same version promoted N+1 meanwhile, or the site recovered) nothing is
generated. Otherwise each attempt captures the site again and generates a
candidate that is *not* committed yet; the candidate runs against every channel
mapped to version N (the heal task's own channel with its credentials, the others
with their stored public config). Each channel must yield items that carry every
field of the candidate's recipe (each on some item, the id field on every item),
in a count of at least ``HYDRA_HEAL_TOLERANCE`` times its last good run. Only
then is the module committed, recorded and every mapping moved in one
transaction. After ``max_heal_retries`` failed attempts the job asks for a
person (``requires_human_review``) with the reasons; each attempt captures into
``<workdir>/heal-<N>/``, which the spider keeps with the job (HAR and screenshots),
and each refused candidate's source is kept in the job's metadata, so the person
can still approve one (the console's reviews).
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crawlers.fetchers.workshop import BuildFailed, HealOutcome, LoadedFetcher, structure_id

if TYPE_CHECKING:
    from crawlers.db.state import RetryPolicy
    from crawlers.fetchers.catalog import ChannelMapping
    from crawlers.fetchers.workshop import FetcherWorkshop

logger = logging.getLogger(__name__)


async def heal(
    workshop: FetcherWorkshop, task: Any, policy: RetryPolicy, workdir: Path, runner: Any
) -> HealOutcome:
    catalog = workshop.catalog
    outcome = HealOutcome()
    mapping = await catalog.mapping(task.channel_id)
    if mapping is None:  # nothing to heal: the channel gets its first fetcher
        built = await workshop.build(
            task, workdir, version=1, reason=f"new channel {task.channel_id}"
        )
        outcome.fetcher, outcome.result = built.name, "new_channel"
        return outcome
    old = mapping.fetcher
    # another heal task (of this channel, or of another channel of the same version)
    # may have promoted a working version meanwhile: then there is nothing to heal
    current = workshop.load(mapping)
    if not await _validate(workshop, current.cls, [mapping], task, runner):
        logger.warning(
            "Channel %s: %s works (healed meanwhile): no new version", task.channel_id, old.name
        )
        outcome.fetcher, outcome.result = old.name, "already_working"
        return outcome
    channels = await catalog.channels_of(old)
    cause = await catalog.last_failure(task.channel_id) or "heal requested"
    site = structure_id(task.config.url)
    for attempt in range(1, max(policy.max_heal_retries, 1) + 1):
        latest = await catalog.latest(site)
        version = (latest.version if latest else old.version) + 1
        reason = f"heal of v{old.version} ({cause}), attempt {attempt}"
        attempt_dir = workdir / f"heal-{attempt}"
        try:
            source, name = await workshop.generate(
                task, attempt_dir, version=version, reason=reason
            )
        except BuildFailed as exc:
            outcome.reasons.append(f"attempt {attempt}: {exc}")
            continue
        candidate = _load_candidate(attempt_dir / f"{name}.py", source)
        problems = await _validate(workshop, candidate, channels, task, runner)
        if problems:
            outcome.reasons.extend(f"attempt {attempt}: {p}" for p in problems)
            logger.warning("Heal candidate %s refused: %s", name, "; ".join(problems))
            # kept with the job: a person may still approve it (the console's reviews)
            await catalog.keep_candidate(
                task.job_id,
                {
                    "attempt": attempt, "name": name, "version": version, "reason": reason,
                    "problems": problems, "source": source,
                    "old": {"id": old.id, "structure_id": old.structure_id, "name": old.name,
                            "version": old.version},
                },
            )  # fmt: skip
            continue
        await asyncio.to_thread(workshop.repo.commit, name, source, f"{name}: {reason}")
        record = await catalog.add_version(site, name, version)
        moved = await catalog.promote(old, record)
        logger.warning("Healed %s -> %s on %d channels", old.name, name, moved)
        outcome.fetcher, outcome.result = name, "healed"
        return outcome
    outcome.review = True
    return outcome


async def _validate(
    workshop: FetcherWorkshop,
    candidate: type[Any],
    channels: list[ChannelMapping],
    task: Any,
    runner: Any,
) -> list[str]:
    recipe = candidate.RECIPE
    fields = list(recipe.fields)  # ApiRecipe: names; DomRecipe: name -> selector
    problems = []
    for channel in channels:
        channel_task = task
        if channel.channel_id != task.channel_id:
            config = task.config.model_copy(
                update={
                    "url": channel.config.get("url", task.config.url),
                    "login_credentials": None,
                }
            )
            channel_task = task.model_copy(
                update={"channel_id": channel.channel_id, "config": config}
            )
        try:
            items = await runner(candidate, channel_task)
        except Exception as exc:  # the candidate itself failed on this channel
            problems.append(f"channel {channel.channel_id}: {type(exc).__name__}: {exc}")
            continue
        # every field of the recipe on some item (some may be optional), and the
        # id field, when the recipe names one, on every item
        missing = [f for f in fields if all(item.get(f) in (None, "") for item in items)]
        if recipe.id_field and any(item.get(recipe.id_field) in (None, "") for item in items):
            missing.append(recipe.id_field)
        last = await workshop.catalog.last_good_items(channel.channel_id)
        if not items:
            problems.append(f"channel {channel.channel_id}: no items")
        elif missing:
            problems.append(f"channel {channel.channel_id}: items without {', '.join(missing)}")
        elif last and len(items) < workshop.config.heal_tolerance * last:
            problems.append(
                f"channel {channel.channel_id}: {len(items)} items, last good run {last}"
            )
    return problems


def _load_candidate(path: Path, source: str) -> type[Any]:
    """The candidate's class from a file outside the repository (nothing committed yet)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location(f"hydra_candidate_{uuid.uuid4().hex}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fetcher: type[Any] = module.Fetcher
    return fetcher


__all__ = ["LoadedFetcher", "heal"]
