"""Nightly selection and promotion decisions as pure functions over manifests."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import pytest

from pipeline.orchestrate.nightly_plan import (
    decide,
    parse_date,
    retry_submission_id,
    select_shards,
    submission_id,
)

pytestmark = pytest.mark.unit


@dataclass
class Shard:
    key: str
    samples: int
    added_at: str


def day(n: int, hour: int = 12) -> str:
    return dt.datetime(2026, 11, n, hour, tzinfo=dt.timezone.utc).isoformat()


BASE = [Shard(f"shard-{i:06d}.tar", 64, day(1)) for i in range(8)]
APPENDED = [Shard(f"shard-{i:06d}.tar", 64, day(3)) for i in range(8, 10)]


def test_first_night_takes_everything() -> None:
    sel = select_shards(BASE + APPENDED, since=None, replay_fraction=0.25, seed="demo/2026-11-03")
    assert sel.keys == tuple(s.key for s in BASE + APPENDED)
    assert sel.replay == () and sel.older == 0
    assert sel.cutoff == day(3)


def test_only_new_shards_plus_replay_after_append() -> None:
    sel = select_shards(BASE + APPENDED, since=day(1), replay_fraction=0.25, seed="demo/2026-11-03")
    assert sel.new == ("shard-000008.tar", "shard-000009.tar")
    assert len(sel.replay) == 2  # ceil(0.25 * 8)
    assert set(sel.replay) <= {s.key for s in BASE}
    assert list(sel.replay) == sorted(sel.replay)  # manifest order
    assert sel.cutoff == day(3)


def test_replay_is_deterministic_per_seed_and_varies_across_nights() -> None:
    many = [Shard(f"old-{i:06d}.tar", 64, day(1)) for i in range(200)] + APPENDED
    picks = {seed: select_shards(many, since=day(2), replay_fraction=0.1, seed=seed).replay
             for seed in ("demo/2026-11-03", "demo/2026-11-04")}
    again = select_shards(many, since=day(2), replay_fraction=0.1, seed="demo/2026-11-03").replay
    assert picks["demo/2026-11-03"] == again
    assert len(again) == 20
    assert picks["demo/2026-11-03"] != picks["demo/2026-11-04"]


@pytest.mark.parametrize("fraction,expected", [(0.0, 0), (0.01, 1), (0.5, 4), (1.0, 8)])
def test_replay_count(fraction: float, expected: int) -> None:
    sel = select_shards(BASE + APPENDED, since=day(1), replay_fraction=fraction, seed="s")
    assert len(sel.replay) == expected


def test_no_new_shards_selects_nothing() -> None:
    sel = select_shards(BASE + APPENDED, since=day(3), replay_fraction=0.5, seed="s")
    assert sel.keys == () and sel.cutoff is None and sel.older == 10


def test_cutoff_compares_times_not_strings() -> None:
    # Same instant written with another offset is not "newer".
    shards = [Shard("a.tar", 1, "2026-11-01T13:00:00+01:00"), Shard("b.tar", 1, "2026-11-01T12:00:01Z")]
    sel = select_shards(shards, since="2026-11-01T12:00:00+00:00", replay_fraction=0.0, seed="s")
    assert sel.new == ("b.tar",)


@pytest.mark.parametrize("shards,since,fraction,message", [
    ([Shard("a.tar", 1, "yesterday")], None, 0.1, "shard 'a.tar' added_at"),
    ([Shard("a.tar", 1, day(1))], "soon", 0.1, "cutoff"),
    ([Shard("a.tar", 1, day(1))], None, 1.5, "nightly.replay_fraction"),
    ([Shard("a.tar", 1, day(1)), Shard("a.tar", 1, day(2))], None, 0.1, "listed twice"),
])
def test_bad_inputs_are_named(shards: list[Shard], since: str | None, fraction: float,
                              message: str) -> None:
    with pytest.raises(ValueError, match=message):
        select_shards(shards, since=since, replay_fraction=fraction, seed="s")


def test_names_and_dates() -> None:
    assert submission_id("demo", "2026-11-27") == "nightly-demo-2026-11-27"
    assert retry_submission_id("demo", "2026-11-27", 2) == "nightly-demo-2026-11-27-attempt2"
    assert parse_date(None, today=dt.date(2026, 1, 2)) == "2026-01-02"
    assert parse_date("2026-02-28") == "2026-02-28"
    for bad in ("2026-02-30", "2026-2-3", "tomorrow", "2026-02-28T00:00"):
        with pytest.raises(ValueError, match="--date"):
            parse_date(bad)
    with pytest.raises(ValueError, match="attempt"):
        retry_submission_id("demo", "2026-11-27", 1)


@pytest.mark.parametrize("new,champion,promote,reason", [
    (0.70, None, True, "no-champion"),
    (0.71, 0.70, True, "better"),
    (0.70, 0.70, True, "equal"),
    (0.69, 0.70, False, "worse"),
])
def test_decide(new: float, champion: float | None, promote: bool, reason: str) -> None:
    d = decide(new, champion)
    assert (d.promote, d.reason) == (promote, reason)
    assert d.tag == ("promoted" if promote else "kept-champion")


def test_decide_rejects_nan() -> None:
    with pytest.raises(ValueError, match="new_score"):
        decide(float("nan"), 0.5)
