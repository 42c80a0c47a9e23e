"""Tests for lab_kit.spool: real SQLite files in tmp_path, real child processes, no mocks."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from lab_kit.producer.spool import (
    Spool,
    SpoolCorruptError,
    SpooledRecord,
    SpoolError,
    SpoolFullError,
    SpoolLockedError,
    SpoolPathError,
    next_submit_order,
)


def rows(n: int, prefix: str = "p") -> list[tuple[str, bytes | None, bytes, str]]:
    return [("posts", f"u{i % 3}".encode(), f"v{i}".encode(), f"{prefix}{i}") for i in range(n)]


def run_child(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run Python code in a fresh interpreter (the venv's, where lab_kit is installed)."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


# ---------------------------------------------------------------------------
# Round trip
# ---------------------------------------------------------------------------


def test_append_peek_ack_nack_round_trip(tmp_path: Path) -> None:
    with Spool(tmp_path / "spool.db") as spool:
        s1 = spool.append("posts", b"alice", b"hello", "p1")
        s2 = spool.append("posts", None, b"no key", "p2")
        assert spool.append_many(rows(3, prefix="m")) == 3
        assert s2 > s1
        assert spool.count() == len(spool) == 5
        assert spool.post_ids() == ["p1", "p2", "m0", "m1", "m2"]

        batch = spool.peek(limit=10)
        assert [r.seq for r in batch] == sorted(r.seq for r in batch)
        assert batch[0] == SpooledRecord(
            seq=s1,
            topic="posts",
            key=b"alice",
            value=b"hello",
            post_id="p1",
            enqueued_at=batch[0].enqueued_at,
            attempts=0,
        )
        assert batch[1].key is None
        assert isinstance(batch[2].value, bytes)
        assert spool.peek(limit=2) == batch[:2]

        assert spool.ack([s1]) == 1
        assert spool.nack([s2]) == 1
        assert spool.nack([s2]) == 1
        assert spool.ack([s1]) == 0  # already gone
        left = spool.peek()
        assert [r.post_id for r in left] == ["p2", "m0", "m1", "m2"]
        assert left[0].attempts == 2
        assert left[1].attempts == 0
        assert spool.count() == 4


def test_spool_is_reopened_with_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    with Spool(path) as spool:
        spool.append_many(rows(10))
    with Spool(str(path), synchronous="full") as spool:
        assert spool.post_ids() == [f"p{i}" for i in range(10)]
        assert spool.stats()["synchronous"] == "FULL"


def test_seq_is_never_reused_after_the_spool_empties(tmp_path: Path) -> None:
    with Spool(tmp_path / "spool.db") as spool:
        seqs = [spool.append("posts", None, b"v", f"p{i}") for i in range(3)]
        spool.ack(seqs)
        assert spool.count() == 0
        # a late ack(seqs[-1]) from a crashed replayer must not hit the next post
        assert spool.append("posts", None, b"v", "new") > max(seqs)


def test_append_many_is_all_or_nothing(tmp_path: Path) -> None:
    with Spool(tmp_path / "spool.db") as spool:
        bad = [*rows(3), ("posts", None, "text, not bytes", "p-bad")]
        with pytest.raises(TypeError, match="value: must be bytes"):
            spool.append_many(bad)
        assert spool.count() == 0
        with pytest.raises(ValueError, match="topic"):
            spool.append("", None, b"v", "p")
        assert spool.append_many([]) == 0


def test_stats_and_sizes(tmp_path: Path) -> None:
    with Spool(tmp_path / "spool.db") as spool:
        assert spool.oldest_age_s() is None
        assert spool.pending_bytes() == 0
        spool.append("posts", b"abc", b"12345", "p1")  # 3 + 5 bytes
        spool.append("posts", None, b"1234567", "p2")  # 7 bytes
        time.sleep(0.05)
        seq = spool.lease(1)[0].seq
        spool.nack([seq])
        spool.lease(1)
        st = spool.stats()
        assert st["count"] == 2
        assert st["leased"] == 1
        assert st["pending_bytes"] == 15
        assert st["max_attempts"] == 1
        assert st["oldest_age_s"] >= 0.05
        assert st["file_bytes"] > 0


def test_closed_spool_refuses_work(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db")
    spool.close()
    spool.close()  # twice is fine
    with pytest.raises(SpoolError, match="closed"):
        spool.append("posts", None, b"v", "p")
    with pytest.raises(ValueError, match="synchronous"):
        Spool(tmp_path / "other.db", synchronous="OFF")


# ---------------------------------------------------------------------------
# Durability across a crash
# ---------------------------------------------------------------------------


def test_rows_survive_kill_9_of_the_writer(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    child = run_child(
        """
        import os, signal, sys
        from lab_kit.producer.spool import Spool
        spool = Spool(sys.argv[1])
        for i in range(300):
            spool.append("posts", b"u%d" % (i % 7), b"value-%d" % i, "p%d" % i)
        spool.append_many(("posts", None, b"b", "b%d" % i) for i in range(200))
        os.kill(os.getpid(), signal.SIGKILL)   # no close(), no flush, no atexit
        """,
        str(path),
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    # the commits live in the WAL file, not yet checkpointed into spool.db
    assert os.path.getsize(f"{path}-wal") > 0
    with Spool(path) as spool:
        assert spool.count() == 500
        expected = [f"p{i}" for i in range(300)] + [f"b{i}" for i in range(200)]
        assert spool.post_ids() == expected
        assert spool.peek(1)[0].value == b"value-0"


# ---------------------------------------------------------------------------
# Leases: two replayers, two processes
# ---------------------------------------------------------------------------

LEASE_ALL = """
import json, sys
from lab_kit.producer.spool import Spool
with Spool(sys.argv[1]) as spool:
    print(json.dumps([r.seq for r in spool.lease(1000, lease_s=60)]))
"""


def test_leases_are_exclusive_between_processes(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    with Spool(path) as spool:
        spool.append_many(rows(10))
        all_seqs = [r.seq for r in spool.peek(100)]
        mine = [r.seq for r in spool.lease(4, lease_s=60)]
        assert mine == all_seqs[:4]  # oldest first
        assert [r.seq for r in spool.peek()] == all_seqs[4:]  # peek skips live leases
        child = run_child(LEASE_ALL, str(path))
        assert child.returncode == 0, child.stderr
        theirs = json.loads(child.stdout)
        assert theirs == all_seqs[4:]  # the other process got only the rows we did not lease
        # everything is leased now: nobody else gets anything, but nothing is lost
        assert spool.lease(100) == []
        assert spool.count() == 10


def test_concurrent_replayer_processes_never_share_a_row(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    with Spool(path) as spool:
        spool.append_many(rows(600))
        all_seqs = {r.seq for r in spool.peek(1000)}
    replayer = textwrap.dedent(
        """
        import json, sys
        from lab_kit.producer.spool import Spool
        got = []
        with Spool(sys.argv[1]) as spool:
            while batch := spool.lease(7, lease_s=60):
                got += [r.seq for r in batch]
                spool.ack([r.seq for r in batch])
        print(json.dumps(got))
        """
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", replayer, str(path)], stdout=subprocess.PIPE)
        for _ in range(2)
    ]
    outputs = [json.loads(p.communicate(timeout=30)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    a, b = (set(o) for o in outputs)
    assert len(outputs[0]) == len(a) and len(outputs[1]) == len(b)
    assert not a & b  # no row was sent twice
    assert a | b == all_seqs  # and every row was sent
    with Spool(path) as spool:
        assert spool.count() == 0


def test_expired_lease_reappears_and_release_returns_rows(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    with Spool(path) as first, Spool(path) as second:
        first.append_many(rows(5))
        crashed = [r.seq for r in first.lease(3, lease_s=1.0)]  # replayer "dies" here
        assert [r.post_id for r in second.lease(10, lease_s=60)] == ["p3", "p4"]
        assert second.lease(10) == []
        time.sleep(1.1)
        again = second.lease(10, lease_s=60)
        assert [r.seq for r in again] == crashed  # at-least-once: they come back
        assert all(r.attempts == 0 for r in again)
        assert first.peek() == []
        assert second.release(crashed) == 3
        assert [r.seq for r in first.peek()] == crashed


# ---------------------------------------------------------------------------
# Threads
# ---------------------------------------------------------------------------


def test_concurrent_appends_from_threads(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db")
    n_threads, n_each = 8, 150
    seqs: dict[int, list[int]] = {}
    start = threading.Barrier(n_threads)

    def writer(t: int) -> None:
        start.wait()
        mine = seqs.setdefault(t, [])
        for i in range(n_each):
            mine.append(spool.append("posts", f"t{t}".encode(), b"v", f"t{t}-{i}"))
        spool.append_many(rows(50, prefix=f"t{t}-m"))

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=30)
    with spool:
        assert spool.count() == n_threads * (n_each + 50)
        flat = [s for lst in seqs.values() for s in lst]
        assert len(set(flat)) == len(flat) == n_threads * n_each
        assert all(lst == sorted(lst) for lst in seqs.values())  # each thread's order kept
        ids = spool.post_ids()
        assert len(set(ids)) == len(ids)
        for t in range(n_threads):  # per-key order in the spool = append order
            mine = [p for p in ids if p.startswith(f"t{t}-") and "-m" not in p]
            assert mine == [f"t{t}-{i}" for i in range(n_each)]


# ---------------------------------------------------------------------------
# Bad paths and bad files
# ---------------------------------------------------------------------------


def test_missing_folder_is_named(tmp_path: Path) -> None:
    folder = tmp_path / "no" / "such"
    with pytest.raises(SpoolPathError) as err:
        Spool(folder / "spool.db")
    assert str(err.value) == (
        f"spool_path: folder {folder} does not exist; create it or choose another path"
    )
    assert err.value.path == str(folder / "spool.db")
    assert not folder.exists()


def test_file_where_the_folder_should_be(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    with pytest.raises(SpoolPathError, match="is not a folder"):
        Spool(tmp_path / "afile" / "spool.db")
    with pytest.raises(SpoolPathError, match="is a folder"):
        Spool(tmp_path)


def test_read_only_folder(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("running as root: chmod 0o500 does not stop root from writing")
        with pytest.raises(SpoolPathError, match=r"ro is not writable"):
            Spool(folder / "spool.db")
    finally:
        folder.chmod(0o700)


def test_unwritable_folder_even_for_root() -> None:
    # Nobody, root included, can create a file in /proc.
    if not os.path.isdir("/proc/self"):
        pytest.skip("no procfs on this system")
    with pytest.raises(SpoolPathError, match=r"folder /proc is not writable"):
        Spool("/proc/spool.db")


def _text_file(p: Path) -> None:
    p.write_text("this is a text file, not a spool\n" * 20)


def _random_bytes(p: Path) -> None:
    p.write_bytes(os.urandom(8192))


def _other_database(p: Path) -> None:
    con = sqlite3.connect(p)
    con.execute("CREATE TABLE users (name TEXT)")
    con.commit()
    con.close()


def _damaged_spool(p: Path) -> None:
    with Spool(p) as spool:
        spool.append_many(("posts", None, b"x" * 200, f"p{i}") for i in range(2000))
    with open(p, "r+b") as f:  # scribble over some b-tree pages
        f.seek(4096 * 3)
        f.write(os.urandom(4096 * 5))


@pytest.mark.parametrize("make", [_text_file, _random_bytes, _other_database, _damaged_spool])
def test_not_a_spool_database(tmp_path: Path, make) -> None:
    path = tmp_path / "spool.db"
    make(path)
    before = path.read_bytes()
    with pytest.raises(SpoolCorruptError, match="is not a spool database") as err:
        Spool(path)
    assert "move it aside and start a new spool" in str(err.value)
    assert str(path) in str(err.value)
    if make is _other_database:
        assert path.read_bytes() == before  # we did not convert someone else's file to WAL


def test_locked_database_times_out_and_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    spool = Spool(path, busy_timeout_s=0.2)
    spool.append_many(rows(20))
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        t0 = time.monotonic()
        with pytest.raises(
            SpoolLockedError, match=r"is locked by another process \(timeout 0.2 s\)"
        ):
            spool.append("posts", None, b"v", "while-locked")
        assert 0.15 <= time.monotonic() - t0 < 3
        with pytest.raises(SpoolLockedError):
            spool.lease(5)
    finally:
        other.execute("ROLLBACK")
        other.close()
    with spool:
        spool.append("posts", None, b"v", "after")
        assert spool.post_ids() == [f"p{i}" for i in range(20)] + ["after"]
        assert spool.peek(1)[0].attempts == 0


def test_opening_a_database_locked_by_another_process(tmp_path: Path) -> None:
    # a rollback-journal database under an exclusive lock cannot even be read
    path = tmp_path / "spool.db"
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("CREATE TABLE x (y)")
    other.execute("BEGIN EXCLUSIVE")
    other.execute("INSERT INTO x VALUES (1)")
    try:
        with pytest.raises(SpoolLockedError, match="locked"):
            Spool(path, busy_timeout_s=0.1)
    finally:
        other.execute("ROLLBACK")
        other.close()


def test_disk_full_keeps_what_was_stored(tmp_path: Path) -> None:
    # A real SQLITE_FULL without filling the disk: cap the file size for this connection.
    spool = Spool(tmp_path / "spool.db")
    spool.append_many(rows(10))
    conn = spool._conn
    assert conn is not None
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages + 2}")
    with pytest.raises(SpoolFullError, match="database or disk is full") as err:
        spool.append_many(("posts", None, b"x" * 4000, f"big{i}") for i in range(50))
    assert "free space" in str(err.value)
    conn.execute("PRAGMA max_page_count = 1073741823")
    with spool:
        assert spool.post_ids() == [f"p{i}" for i in range(10)]  # the batch was all-or-none
        spool.append("posts", None, b"v", "after")
        assert spool.count() == 11


# ---------------------------------------------------------------------------
# Throughput (printed, never asserted: machines differ)
# ---------------------------------------------------------------------------


def test_append_throughput_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    value = b"x" * 300  # about the size of a post as JSON
    with Spool(tmp_path / "spool.db") as spool:
        t0 = time.perf_counter()
        for i in range(2000):
            spool.append("posts", b"u%d" % (i % 50), value, f"s{i}")
        single = 2000 / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        for b in range(40):
            spool.append_many(("posts", b"u", value, f"b{b}-{i}") for i in range(500))
        many = 40 * 500 / (time.perf_counter() - t0)
        assert spool.count() == 2000 + 40 * 500
    with capsys.disabled():
        print(f"\nspool append: {single:,.0f} rows/s single, {many:,.0f} rows/s batches of 500")


# ---------------------------------------------------------------------------
# Checkpoints off the writers
# ---------------------------------------------------------------------------


def test_without_autocheckpoint_only_checkpoint_copies_the_wal(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    spool = Spool(path, autocheckpoint=False)
    for r in rows(1500):  # one commit each: far past SQLite's 1,000-page auto checkpoint
        spool.append(*r)
    db_bytes = path.stat().st_size
    frames, copied = spool.checkpoint()
    assert frames > 1000  # nobody copied the WAL back before: it is all still there
    assert copied == frames
    assert path.stat().st_size > db_bytes  # the checkpoint wrote the rows into the file
    assert [r.post_id for r in spool.peek(2000)] == [f"p{i}" for i in range(1500)]
    spool.close()
    with pytest.raises(SpoolError, match="closed"):
        spool.checkpoint()


def test_autocheckpoint_is_sqlites_default(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with Spool(path) as spool:
        for r in rows(1500):
            spool.append(*r)
        frames, _copied = spool.checkpoint()
    assert frames < 1000  # a commit past 1,000 WAL pages checkpointed (and restarted it)


def test_is_empty_agrees_with_the_count(tmp_path: Path) -> None:
    with Spool(tmp_path / "s.db") as spool:
        assert spool.is_empty() and len(spool) == 0
        spool.append_many(rows(3))
        leased = spool.lease(3)  # leased rows are still in the spool
        assert not spool.is_empty() and len(spool) == 3
        spool.ack([r.seq for r in leased])
        assert spool.is_empty() and len(spool) == 0


# --- submit order (issue 20: order per user through outages) ---------------------------------


def test_replay_follows_submit_order_not_write_order(tmp_path: Path) -> None:
    """A post that failed late in the client is written after newer ones, and still comes
    back first: lease, peek and post_ids sort by submit order."""
    with Spool(tmp_path / "s.db") as spool:
        p1, p2, p3 = next_submit_order(), next_submit_order(), next_submit_order()
        spool.append_many([("posts", b"u1", b"v2", "p2", p2), ("posts", b"u1", b"v3", "p3", p3)])
        spool.append("posts", b"u1", b"v1", "p1", submit_order=p1)  # the late failure
        assert [r.post_id for r in spool.peek()] == ["p1", "p2", "p3"]
        assert spool.post_ids() == ["p1", "p2", "p3"]
        assert [r.post_id for r in spool.lease(2)] == ["p1", "p2"]


def test_rows_without_a_stamp_sort_after_every_stamped_one(tmp_path: Path) -> None:
    with Spool(tmp_path / "s.db") as spool:
        stamped = next_submit_order()
        spool.append("posts", None, b"v", "unstamped")  # stamped now: after `stamped`
        spool.append("posts", None, b"v", "older", submit_order=stamped)
        assert spool.post_ids() == ["older", "unstamped"]


@pytest.mark.parametrize("bad", [-1, "3", 1.5])
def test_a_bad_submit_order_is_refused_naming_the_field(tmp_path: Path, bad) -> None:
    with Spool(tmp_path / "s.db") as spool, pytest.raises(ValueError, match="submit_order"):
        spool.append("posts", None, b"v", "p", submit_order=bad)


def test_a_version_1_spool_is_migrated_and_its_rows_come_first(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)  # the version-1 table, as lab_kit wrote it before
    conn.execute("CREATE TABLE spool (seq INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT "
                 "NULL, key BLOB, value BLOB NOT NULL, post_id TEXT NOT NULL, enqueued_at REAL "
                 "NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, leased_until REAL)")
    conn.executemany("INSERT INTO spool (topic, key, value, post_id, enqueued_at) "
                     "VALUES ('posts', NULL, x'00', ?, 0)", [("old-1",), ("old-2",)])
    conn.execute("PRAGMA user_version=1")
    conn.commit()
    conn.close()
    with Spool(path) as spool:
        spool.append("posts", None, b"v", "new")
        assert spool.post_ids() == ["old-1", "old-2", "new"]
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == 2


# ---------------------------------------------------------------------------
# Group commit: Spool.sync()
# ---------------------------------------------------------------------------

def _count_fsyncs(monkeypatch: pytest.MonkeyPatch, delay_s: float = 0.0,
                  fail: list[bool] | None = None) -> list[int]:
    """Wrap os.fsync: record each call (slowed by ``delay_s``; raising while ``fail[0]``)."""
    calls: list[int] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        calls.append(fd)
        if fail and fail[0]:
            raise OSError(5, "Input/output error")
        time.sleep(delay_s)
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return calls


def test_sync_is_a_group_commit_one_fsync_serves_many_waiters(tmp_path: Path,
                                                              monkeypatch) -> None:
    with Spool(tmp_path / "s.db") as s:
        calls = _count_fsyncs(monkeypatch, delay_s=0.05)
        start = threading.Barrier(20)
        covered: list[int] = []

        def writer(i: int) -> None:
            s.append("posts", None, b"v", f"p{i}")
            start.wait()
            covered.append(s.sync())

        threads = [threading.Thread(target=writer, args=(i,)) for i in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert len(covered) == 20 and min(covered) == 20  # every waiter's commit was covered
        # one fsync per file (the WAL and the database) per round; 20 callers, few rounds
        assert 2 <= len(calls) <= 2 * 3, calls


def test_sync_without_new_commits_does_not_touch_the_disk(tmp_path: Path, monkeypatch) -> None:
    with Spool(tmp_path / "s.db") as s:
        s.append("posts", None, b"v", "p0")
        s.sync()
        calls = _count_fsyncs(monkeypatch)
        assert s.sync() == 1 and calls == []
        s.append_many(rows(3))
        assert s.sync() == 2 and len(calls) == 2  # one transaction, one more commit


def test_a_failed_fsync_covers_nothing_and_the_next_sync_tries_again(tmp_path: Path,
                                                                     monkeypatch) -> None:
    with Spool(tmp_path / "s.db") as s:
        fail = [True]
        calls = _count_fsyncs(monkeypatch, fail=fail)
        s.append("posts", None, b"v", "p0")
        with pytest.raises(OSError):
            s.sync()
        fail[0] = False
        assert s.sync() == 1 and len(calls) == 3  # the failed call, then both files
