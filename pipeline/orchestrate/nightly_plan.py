"""Nightly runs, the pure part: names, the date, which shards a night trains on, promotion.

A night is identified by (config name, date). Its Ray submission id, MLflow run name and Ray
Train run name are all derived from that pair, so a second submission of the same night
finds the first instead of starting another, and a failed night resumes its own run.

Data of a night: the shards whose manifest `added_at` is newer than the data cutoff of the
last successful night (the newest `added_at` that night trained on), plus a deterministic
`replay_fraction` of the older shards; every shard when there was no successful night yet.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

# MLflow tags of a nightly run.
TAG_DATE = "mocopipe.schedule_date"  # YYYY-MM-DD
TAG_STATE = "mocopipe.nightly_state"  # running | done | skipped
TAG_DECISION = "mocopipe.nightly_decision"  # promoted | kept-champion | no-new-data
TAG_CUTOFF = "mocopipe.data_cutoff"  # newest added_at trained on (ISO-8601 UTC)
TAG_NEW = "mocopipe.new_shards"  # how many new shards
TAG_REPLAY = "mocopipe.replay_shards"  # how many replayed older shards
TAG_WARM = "mocopipe.warm_start"  # the model URI the night started from, or "none"
FINAL_STATES = ("done", "skipped")


class ShardLike(Protocol):
    """What selection needs of a manifest entry (pipeline.shards.manifest.ShardInfo)."""

    key: str
    samples: int
    added_at: str


def parse_date(text: str | None, *, today: dt.date | None = None) -> str:
    """Validate a `YYYY-MM-DD` schedule date; None -> today (UTC)."""
    if text is None:
        return (today or dt.datetime.now(dt.timezone.utc).date()).isoformat()
    try:
        if len(text) != 10:
            raise ValueError(text)
        return dt.date.fromisoformat(text).isoformat()
    except ValueError:
        raise ValueError(f"--date: {text!r} is not a date of the form YYYY-MM-DD") from None


def submission_id(name: str, date: str) -> str:
    """The Ray job submission id of a night: `nightly-<config>-<date>`."""
    return f"nightly-{name}-{date}"


def retry_submission_id(name: str, date: str, attempt: int) -> str:
    """Attempt N >= 2 of a night whose earlier attempt failed (Ray ids are single-use)."""
    if attempt < 2:
        raise ValueError(f"attempt: {attempt} must be >= 2 "
                         f"(attempt 1 is {submission_id(name, date)})")
    return f"{submission_id(name, date)}-attempt{attempt}"


def experiment_name(name: str) -> str:
    """One MLflow experiment per nightly config; its runs are named by date."""
    return f"{name}-nightly"


def ray_run_name(name: str, date: str) -> str:
    """The Ray Train run name of a night (reused on resume)."""
    return f"{name}-nightly-{date}"


def _parse_time(value: str, what: str) -> dt.datetime:
    try:
        t = dt.datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what}: {value!r} is not an ISO-8601 timestamp") from None
    if t.tzinfo is None:  # manifests write UTC; a naive stamp is taken as UTC
        t = t.replace(tzinfo=dt.timezone.utc)
    return t


@dataclass(frozen=True)
class Selection:
    """The shards of one night, each tuple in manifest order."""

    new: tuple[str, ...]
    replay: tuple[str, ...]
    older: int  # shards that were not new (the replay pool)
    cutoff: str | None  # the newest added_at among the selected shards

    @property
    def keys(self) -> tuple[str, ...]:
        return self.new + self.replay


def select_shards(shards: Sequence[ShardLike], *, since: str | None, replay_fraction: float,
                  seed: str) -> Selection:
    """Pick the shards a night trains on (pure and deterministic).

    Args:
        shards: manifest entries in manifest order.
        since: the last successful night's data cutoff; None -> every shard is new.
        replay_fraction: in [0, 1]; ceil(fraction x older) older shards are replayed, the
            ones with the smallest sha256(seed/key), so a night always gets the same replay
            set and different nights get different ones.
        seed: e.g. "<config>/<date>".
    """
    if not 0.0 <= replay_fraction <= 1.0:
        raise ValueError(f"nightly.replay_fraction: {replay_fraction!r} must be in [0, 1]")
    seen: set[str] = set()
    for s in shards:
        if s.key in seen:
            raise ValueError(f"manifest: shard {s.key!r} is listed twice")
        seen.add(s.key)
    limit = _parse_time(since, "last night's data cutoff") if since else None
    stamps = {s.key: _parse_time(s.added_at, f"shard {s.key!r} added_at") for s in shards}
    new = [s.key for s in shards if limit is None or stamps[s.key] > limit]
    old = [s.key for s in shards if limit is not None and stamps[s.key] <= limit]
    count = min(len(old), math.ceil(replay_fraction * len(old))) if new else 0

    def rank(key: str) -> str:
        return hashlib.sha256(f"{seed}/{key}".encode()).hexdigest()

    chosen = set(sorted(old, key=rank)[:count])
    replay = [k for k in old if k in chosen]
    picked = [stamps[k] for k in new + replay]
    cutoff = max(picked).isoformat() if picked else None
    return Selection(new=tuple(new), replay=tuple(replay), older=len(old), cutoff=cutoff)


@dataclass(frozen=True)
class Decision:
    """Whether the night's model becomes the champion, and why."""

    promote: bool
    reason: str  # "no-champion" | "better" | "equal" | "worse"
    new_score: float
    champion_score: float | None

    @property
    def tag(self) -> str:
        return "promoted" if self.promote else "kept-champion"


def decide(new_score: float, champion_score: float | None) -> Decision:
    """Promote when there is no champion or the new model is at least as good."""
    for name, value in (("new_score", new_score), ("champion_score", champion_score)):
        if value is not None and not math.isfinite(value):
            raise ValueError(f"{name}: {value!r} is not a finite accuracy")
    if champion_score is None:
        return Decision(True, "no-champion", new_score, None)
    if new_score > champion_score:
        return Decision(True, "better", new_score, champion_score)
    if new_score == champion_score:
        return Decision(True, "equal", new_score, champion_score)
    return Decision(False, "worse", new_score, champion_score)
