"""The spool's caps and counters (no broker): check_room() refuses new posts at max_rows,
max_bytes or min_free_bytes; rows/payload_bytes follow appends and acks without a COUNT(*);
a really full disk (SQLite's SQLITE_FULL) is a SpoolFullError that stores nothing."""

from __future__ import annotations

import pytest

from lab_kit.producer.spool import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_ROWS,
    DEFAULT_MIN_FREE_BYTES,
    Spool,
    SpoolFullError,
)


def rows(n: int, size: int = 10, start: int = 0) -> list[tuple]:
    return [("posts", b"k", b"v" * size, f"p-{start + i}") for i in range(n)]


def test_defaults_are_the_documented_ones(tmp_path):
    with Spool(tmp_path / "s.db") as s:
        assert (s.max_rows, s.max_bytes, s.min_free_bytes) == (
            DEFAULT_MAX_ROWS, DEFAULT_MAX_BYTES, DEFAULT_MIN_FREE_BYTES)
    assert (DEFAULT_MAX_ROWS, DEFAULT_MAX_BYTES) == (1_000_000, 256 * 1024 * 1024)


def test_rows_cap_refuses_new_posts_until_acked(tmp_path):
    with Spool(tmp_path / "s.db", max_rows=3, min_free_bytes=0) as s:
        s.append_many(rows(2))
        s.check_room()  # 2 < 3: room
        s.append("posts", b"k", b"v", "p-9")
        with pytest.raises(SpoolFullError) as info:
            s.check_room()
        assert (info.value.field, info.value.limit) == ("spool_rows", 3)
        assert "max_rows=3" in str(info.value)
        s.append_many(rows(2, start=10))  # appends are never refused by the cap
        assert s.rows == 5 == s.count()
        batch = s.lease(3)
        s.ack([r.seq for r in batch])
        s.check_room()  # 2 left
        assert s.rows == 2


def test_bytes_cap(tmp_path):
    with Spool(tmp_path / "s.db", max_bytes=100, min_free_bytes=0) as s:
        s.append_many(rows(4, size=20))  # 4 * (1 + 20) = 84 bytes
        assert s.payload_bytes == 84
        s.check_room()
        s.append("posts", None, b"x" * 16, "p-x")
        with pytest.raises(SpoolFullError) as info:
            s.check_room()
        assert (info.value.field, info.value.limit) == ("spool_bytes", 100)


def test_free_disk_floor(tmp_path):
    with Spool(tmp_path / "s.db", min_free_bytes=1 << 62) as s:  # more than any disk has
        with pytest.raises(SpoolFullError) as info:
            s.check_room()
        assert info.value.field == "disk_free"


def test_counters_follow_every_change_and_count_corrects_them(tmp_path):
    path = tmp_path / "s.db"
    with Spool(path) as s:
        s.append_many(rows(50, size=7))
        s.append("posts", None, b"abc", "p-a")
        assert (s.rows, s.payload_bytes) == (51, 50 * 8 + 3)
        batch = s.lease(20)
        s.nack([r.seq for r in batch[:5]])
        s.release([r.seq for r in batch[5:10]])
        s.ack([r.seq for r in batch[10:]] + [999_999])  # an unknown seq deletes nothing
        assert s.rows == 41 == s.count()
        assert s.payload_bytes == s.pending_bytes()
        s.ack([r.seq for r in s.peek(1000)])
        assert (s.rows, s.payload_bytes) == (0, 0)
        with Spool(path) as other:  # another writer of the same file
            other.append_many(rows(3))
        assert s.rows == 0  # not seen until an exact count...
        assert s.count() == 3 and s.rows == 3  # ...which corrects the counter
    with Spool(path) as again:  # a new Spool counts once at open
        assert again.rows == 3 and again.payload_bytes == 33


def test_acks_of_more_than_one_chunk(tmp_path):
    with Spool(tmp_path / "s.db") as s:
        s.append_many(rows(1234))
        s.ack([r.seq for r in s.lease(1200)])
        assert s.rows == 34 == s.count()


def test_rows_is_read_without_a_query(tmp_path):
    with Spool(tmp_path / "s.db") as s:
        s.append_many(rows(5))
        s._conn, conn = None, s._conn  # any query would now raise "the spool is closed"
        try:
            assert s.rows == 5 and s.payload_bytes == 55
            s.check_room()
        finally:
            s._conn = conn


def test_a_full_disk_is_a_spool_full_error_that_stores_nothing(tmp_path):
    with Spool(tmp_path / "s.db", min_free_bytes=0) as s:
        s.append_many(rows(5))
        pages = s._conn.execute("PRAGMA page_count").fetchone()[0]
        s._conn.execute(f"PRAGMA max_page_count={pages + 1}")  # the "disk" is full now
        with pytest.raises(SpoolFullError) as info:
            s.append_many(rows(500, size=1000))
        assert info.value.field == "disk"
        assert s.rows == 5 == s.count()


@pytest.mark.parametrize(("name", "value"), [("max_rows", 0), ("max_bytes", -1),
                                             ("min_free_bytes", -1), ("max_rows", 1.5)])
def test_bad_caps_are_refused_naming_the_field(tmp_path, name, value):
    with pytest.raises(ValueError, match=name):
        Spool(tmp_path / "s.db", **{name: value})

