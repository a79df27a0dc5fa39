"""Claims: one worker wins each key, a dead worker's claim is taken over, failures are kept (SQLite, PostgreSQL)."""

import multiprocessing
import time

import pytest

from imagenet_transfer.claims import Claims


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'coordination.db'}"
    return request.getfixturevalue("postgres_db")


def test_one_worker_wins_and_the_others_see_it(db_url):
    a, b = Claims(db_url, owner="a"), Claims(db_url, owner="b")
    first, second = a.claim("step-1"), b.claim("step-1")
    assert first.acquired and not second.acquired
    assert (second.state, second.owner) == ("running", "a")
    assert a.claim("step-1").acquired  # the holder asking again still holds it
    first.complete({"run_id": "r1"})
    seen = b.claim("step-1")
    assert (seen.acquired, seen.state, seen.result) == (False, "done", {"run_id": "r1"})


def test_a_dead_workers_claim_is_taken_over_once(db_url):
    dead, c, d = Claims(db_url, owner="dead", ttl=0.3), Claims(db_url, owner="c"), Claims(db_url, owner="d")
    assert dead.claim("step-2").acquired
    assert not c.claim("step-2").acquired  # its heartbeat is recent
    time.sleep(0.5)  # no heartbeat: expired
    taken = [c.claim("step-2").acquired, d.claim("step-2").acquired]
    assert taken == [True, False]
    assert not dead.renew("step-2")  # the old owner learns it lost the claim


def test_a_heartbeat_keeps_a_long_claim_alive(db_url):
    holder, other = Claims(db_url, owner="h", ttl=0.4), Claims(db_url, owner="o")
    with holder.hold("step-3") as claim:
        assert claim.acquired
        time.sleep(1.0)  # 2.5 expiries, renewed by the heartbeat
        assert not other.claim("step-3").acquired
        claim.complete({"ok": True})
    assert other.get("step-3").state == "done"


def test_failures_are_recorded_and_retried_only_on_request(db_url):
    a, b = Claims(db_url, owner="a"), Claims(db_url, owner="b")
    with pytest.raises(ValueError), a.hold("step-4"):
        raise ValueError("out of memory")
    failed = b.claim("step-4")
    assert (failed.acquired, failed.state) == (False, "failed")
    assert "out of memory" in failed.result["error"]
    assert b.claim("step-4", retry_failed=True).acquired


def test_an_interrupted_holder_releases_its_claim(db_url):
    a, b = Claims(db_url, owner="a"), Claims(db_url, owner="b")
    with pytest.raises(KeyboardInterrupt), a.hold("step-5"):
        raise KeyboardInterrupt
    assert b.get("step-5") is None and b.claim("step-5").acquired


def _race(url: str, keys: list[str], out) -> None:
    claims = Claims(url)
    out.put([key for key in keys if claims.claim(key).acquired])


def test_processes_racing_for_the_same_keys_never_share_one(db_url):
    keys = [f"k{i}" for i in range(40)]
    Claims(db_url)  # the table exists before the race (as after the first worker)
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    workers = [ctx.Process(target=_race, args=(db_url, keys, out)) for _ in range(4)]
    for w in workers:
        w.start()
    won = [out.get(timeout=60) for _ in workers]
    for w in workers:
        w.join(timeout=30)
    flat = [k for got in won for k in got]
    assert sorted(flat) == sorted(keys)  # each key won exactly once
