"""The settlement journal on its own: durable appends, a size bound, replays that stop
and resume, torn lines set aside, segments of other processes, and idempotent replays
against the real settle script."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
from decimal import Decimal
from pathlib import Path

import pytest
from tollway.config import parse_config_text
from tollway.limits.apikeys import ApiKeys, KeySettings
from tollway.limits.clock import ManualClock
from tollway.limits.errors import StoreUnavailable
from tollway.limits.journal import Journal, Stopped, from_line, to_line
from tollway.limits.meter import Charge, Meter
from tollway.limits.plans import TOKEN_UNIT, KeyLimits, Principal
from tollway.limits.replay import Replayer
from tollway.limits.rkeys import Scope
from tollway.limits.store import Store
from tollway.limits.usage import Usage

P = Principal("acme", "key_1", "ws", "alice")


def entry(i: int, ok: bool = True) -> Charge:
    return Charge(
        rid=f"req_{i:04d}",
        principal=P,
        model="gpt-4o-mini",
        usage=Usage(100 + i, 10, 0, 5),
        cost=70 + i,
        ok=ok,
        session="s1" if i % 2 else None,
        upstream_ms=12,
        now_ms=1_767_225_600_000 + i,
    )


class Recorder:
    """A settle that records entries, and fails with StoreUnavailable from call `fail_at`."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.entries: list[Charge] = []
        self.fail_at = fail_at

    async def __call__(self, e: Charge) -> None:
        if self.fail_at is not None and len(self.entries) >= self.fail_at:
            raise StoreUnavailable("down")
        self.entries.append(e)


def test_entries_round_trip() -> None:
    for i in range(4):
        e = entry(i, ok=bool(i % 2))
        assert from_line(to_line(e)) == e
    with pytest.raises(ValueError):
        from_line(b'{"rid": "x"')


async def test_appends_are_durable_and_replayed_in_order(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    events: list[tuple[str, int]] = []
    journal.observers.append(lambda ev, n: events.append((ev, n)))
    written = await asyncio.gather(*(journal.append(entry(i)) for i in range(50)))
    assert all(written)
    assert journal.pending == 50
    assert sum(n for ev, n in events if ev == "written") == 50
    # On disk before any replay: one line per entry.
    assert journal.count() == 50
    settle = Recorder()
    assert await journal.replay(settle) == 50
    assert sorted(e.rid for e in settle.entries) == [entry(i).rid for i in range(50)]
    assert journal.pending == 0 and journal.segments() == []
    assert ("replayed", 50) in events and events[-1] == ("pending", 0)


async def test_the_size_bound_drops_and_counts(tmp_path: Path) -> None:
    line = len(to_line(entry(0)))
    journal = Journal(tmp_path, max_bytes=3 * line + line // 2)
    events: list[tuple[str, int]] = []
    journal.observers.append(lambda ev, n: events.append((ev, n)))
    kept = [await journal.append(entry(0)) for _ in range(5)]
    assert kept == [True, True, True, False, False]
    assert journal.size() <= journal.max_bytes
    assert sum(n for ev, n in events if ev == "dropped") == 2
    # Replaying makes room again.
    await journal.replay(Recorder())
    assert await journal.append(entry(1))


async def test_an_entry_no_json_can_hold_is_dropped_and_counted(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    events: list[tuple[str, int]] = []
    journal.observers.append(lambda ev, n: events.append((ev, n)))
    bad = dataclasses.replace(entry(1), session="\udce9")  # a lone surrogate
    assert not await journal.append(bad)
    assert ("dropped", 1) in events and journal.count() == 0
    assert await journal.append(entry(2))


async def test_a_replay_stopped_by_the_store_keeps_the_rest(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    for i in range(6):
        await journal.append(entry(i))
    first = Recorder(fail_at=2)
    with pytest.raises(Stopped) as stopped:
        await journal.replay(first)
    assert stopped.value.settled == 2
    assert journal.pending == 4 and journal.count() == 4
    second = Recorder()
    assert await journal.replay(second) == 4
    assert [e.rid for e in first.entries + second.entries] == [entry(i).rid for i in range(6)]


async def test_a_torn_line_is_set_aside_and_the_others_settle(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    await journal.append(entry(1))
    journal.close()
    segment = journal.segments()[0]
    with open(segment, "ab") as f:
        f.write(to_line(entry(2)) + to_line(entry(3))[:20])  # a crash cut the last write
    settle = Recorder()
    assert await journal.replay(settle) == 2
    assert [e.rid for e in settle.entries] == ["req_0001", "req_0002"]
    failed = segment.with_name(segment.name + ".failed")
    assert failed.read_bytes() == to_line(entry(3))[:20] + b"\n"
    assert journal.segments() == []


async def test_a_segment_another_process_holds_is_left_to_it(tmp_path: Path) -> None:
    # flock locks belong to an open file, so two journals in one process behave as two
    # processes would.
    writer, replayer = Journal(tmp_path), Journal(tmp_path)
    await writer.append(entry(1))
    settle = Recorder()
    assert await replayer.replay(settle) == 0  # the writer is still appending to it
    writer.close()  # what a process that dies does too: the kernel drops its lock
    assert await replayer.replay(settle) == 1


async def test_the_replayer_waits_for_the_store(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    await journal.append(entry(1))
    up = False

    async def ping() -> bool:
        return up

    settle = Recorder()
    replayer = Replayer(journal, settle, ping, interval=0.01)
    assert await replayer.run_once() == 0 and journal.count() == 1
    up = True
    assert await replayer.run_once() == 1 and journal.count() == 0
    task = asyncio.ensure_future(replayer.run())
    await journal.append(entry(2))
    for _ in range(200):  # the background loop picks it up within a few intervals
        if journal.count() == 0 and len(settle.entries) == 2:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    assert [e.rid for e in settle.entries] == ["req_0001", "req_0002"]


ORGS = """
prices:
  gpt-4o-mini: {input: 0.15, output: 0.60, cache_read: 0.075}
organizations:
  acme:
    limits: {rpm: 1000, tpm: 1000000}
    workspaces: {ws: {}}
    users: {alice: {workspace: ws}}
"""


async def test_a_replay_repeated_after_a_crash_charges_once(tmp_path: Path, store: Store) -> None:
    """A process that settled entries and died before removing them replays them again:
    the settle script answers each repeat as a duplicate and nothing changes."""
    cfg = parse_config_text(ORGS)
    meter = Meter(store, ManualClock(), lambda: cfg)

    settle = meter.settle

    journal = Journal(tmp_path / "j")
    for i in range(5):
        await journal.append(entry(i))
    journal.close()
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "j", copy)
    assert await journal.replay(settle) == 5
    client = store.client
    keys = sorted(await client.keys(f"{store.keys.prefix}:*"))
    state = {k: await client.dump(k) for k in keys if ":ledger" not in k}
    ledger = await client.xlen(store.keys.ledger("acme"))
    assert ledger == 5

    shutil.rmtree(tmp_path / "j")
    shutil.copytree(copy, tmp_path / "j")  # the segment as the dead process left it
    results = []

    async def settle_again(e: Charge):
        results.append(await settle(e))

    assert await journal.replay(settle_again) == 5
    assert all(r.duplicate for r in results)
    assert await client.xlen(store.keys.ledger("acme")) == ledger
    assert {k: await client.dump(k) for k in keys if ":ledger" not in k} == state


async def test_a_replayed_settlement_debits_the_key_s_own_buckets_as_a_live_one(
    tmp_path: Path, store: Store
) -> None:
    """A key with its own TPM limits: the request admitted live and settled from the
    journal (the store was away at its end) leaves the key's buckets exactly where a live
    settlement leaves them: debited by the real tokens, not by the estimate."""
    cfg = parse_config_text(ORGS)
    clock = ManualClock()
    meter = Meter(store, clock, lambda: cfg)
    limits = KeyLimits(rpm=Decimal(10), tpm=100_000, input_tpm=50_000, output_tpm=40_000)
    apikeys = ApiKeys(store, clock)
    live, _ = await apikeys.create("acme", 0, settings=KeySettings(limits=limits))
    replayed, _ = await apikeys.create("acme", 0, settings=KeySettings(limits=limits))
    usage = Usage(1_000, 2_000, 0, 0)
    charges = {}
    for record in (live, replayed):
        rid = "req_" + record.key_id
        d = await meter.admit(record.principal, rid, "gpt-4o-mini", 10, 2)
        assert d.admitted and len(d.buckets) == 2 + 4  # the organization's two, the key's
        charges[record.key_id] = Charge(
            record.principal, rid, "gpt-4o-mini", usage, 1_500, True, now_ms=clock.now_ms()
        )
    await meter.settle(charges[live.key_id])
    journal = Journal(tmp_path / "j")
    assert await journal.append(charges[replayed.key_id])
    assert from_line(to_line(charges[replayed.key_id])) == charges[replayed.key_id]
    assert await journal.replay(meter.settle) == 1
    levels = {}
    for record in (live, replayed):
        for limit in ("tpm", "input_tpm", "output_tpm"):
            name = store.keys.bucket("acme", Scope.key(record.key_id), limit)
            levels[record.key_id, limit] = int(await store.client.hget(name, "l"))
    for limit, rate, tokens in (("tpm", 100_000, 3_000), ("input_tpm", 50_000, 1_000)):
        assert levels[replayed.key_id, limit] == levels[live.key_id, limit]
        assert levels[replayed.key_id, limit] == (rate - tokens) * TOKEN_UNIT
    assert levels[replayed.key_id, "output_tpm"] == (40_000 - 2_000) * TOKEN_UNIT


def test_a_journal_line_written_before_key_limits_were_kept_still_settles() -> None:
    line = to_line(entry(1)).replace(b',"kl":{}', b"")
    assert b'"kl"' not in line and from_line(line) == entry(1)
