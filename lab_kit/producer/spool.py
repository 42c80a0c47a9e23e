"""A durable on-disk spool for posts Kafka could not take yet (stdlib ``sqlite3`` only).

StreamSocial promises *zero loss*: once a post is accepted, it is either acknowledged
by the broker or sitting in this spool. When the broker is unreachable the producer's
callbacks :meth:`Spool.append` the post; when the broker is back a replayer re-sends
the spooled posts and deletes the ones Kafka acknowledged.

Durability
----------
The file is a SQLite database in WAL mode. :meth:`Spool.append` returns only after
the transaction has committed, i.e. after the row is in the WAL file.

* ``synchronous="NORMAL"`` (default): the commit is in the operating system's page
  cache, not necessarily on the platter. It survives a crash of the **process**
  (``kill -9``, an uncaught exception, the OOM killer) but the last commits may be
  lost on **power loss** or a kernel panic.
* ``synchronous="FULL"``: the WAL is fsync'ed at every commit, so it also survives
  power loss -- at the price of one fsync per commit (batch with :meth:`append_many`).

Checkpoints copy the WAL back into the database file, and they fsync. By default SQLite runs
one inside the commit that crosses 1,000 WAL pages, so every few hundred appends one caller
waits for the disk: tens of ms, and over a second while a broker next door recovers its logs
after ``kill -9`` (measured here). ``autocheckpoint=False`` takes them off the writers:
then someone must call :meth:`checkpoint` regularly (the producer's health thread does), on
a connection of its own that does not block the writers.

Replay is at-least-once
-----------------------
::

    with Spool("spool.db") as spool:
        batch = spool.lease(500, lease_s=30)     # oldest first, hidden from others
        sent, failed = resend(batch)             # your code: producer.send(...).get()
        spool.ack(sent)                          # delete: Kafka has them
        spool.nack(failed)                       # attempts += 1, visible again

A lease hides rows from other replayers (other threads or other processes opening
the same file) for ``lease_s`` seconds. If a replayer crashes after sending but
before :meth:`ack`, its lease expires, the rows come back and are sent again:
consumers may see **duplicates** (dedupe on ``post_id``), never a loss.

Per-user order
--------------
Rows are leased and peeked in ``seq`` order (spool order). Records with the same key
keep their relative order as long as **one** replayer runs and it stops a batch at the
first failure (nack the failed record, :meth:`release` the rest); with two replayers
two batches may be sent concurrently and a user's posts can be reordered.

Size caps (backpressure)
------------------------
A spool is bounded by ``max_rows`` (default :data:`DEFAULT_MAX_ROWS`, 1,000,000 posts) and
``max_bytes`` (default :data:`DEFAULT_MAX_BYTES`, 256 MiB of keys and values, not counting
SQLite's own overhead), and it wants ``min_free_bytes`` (default
:data:`DEFAULT_MIN_FREE_BYTES`, 64 MiB) left free on its disk. The caps are an *admission*
limit: :meth:`Spool.check_room` raises :class:`SpoolFullError` (``field``, ``limit``) when a
**new** post should be refused (the post API answers ``503`` with ``Retry-After``). Appends
are never refused for the cap: they carry posts that were already accepted (a failed
delivery, the replay's tail), and refusing them would lose them. So the file may exceed the
cap by what was in flight when the broker went away (at most the producer's
``max_in_flight`` + the failover's ``tail_limit`` posts). A really full disk still raises
:class:`SpoolFullError` from the append itself (nothing from that call is stored).

:attr:`Spool.rows` and :attr:`Spool.payload_bytes` are counters kept as rows are appended
and acked (one ``COUNT(*)`` when the file is opened, none afterwards): ``/healthz``,
``/metrics`` and :meth:`check_room` read them without a query or a lock. They count what this
object wrote and deleted; another process writing the same file is seen at the next
:meth:`count` (an exact ``COUNT(*)``, which also corrects the counters).

Threads and processes
---------------------
One connection (``check_same_thread=False``) guarded by a :class:`threading.Lock`, so
the producer's sender thread and the caller's thread may append concurrently. Other
processes may open the same file (a replacement producer replaying what a crashed one
left): SQLite's file locking serialises the writers, each waiting up to
``busy_timeout_s`` before :class:`SpoolLockedError` is raised.
"""

from __future__ import annotations

import itertools
import os
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

SCHEMA_VERSION = 2

#: Default caps (see "Size caps" above): posts, and bytes of keys + values.
DEFAULT_MAX_ROWS = 1_000_000
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
#: New posts are refused when the spool's disk has less than this free.
DEFAULT_MIN_FREE_BYTES = 64 * 1024 * 1024
#: seqs per ``DELETE ... WHERE seq IN (...)`` (SQLite allows 999 parameters on old builds)
_CHUNK = 500

# AUTOINCREMENT: a seq is never reused, even after the table was emptied, so a late
# ack(seq) from a crashed replayer cannot delete a newer post that got the same number.
# Rows come back in submit order (`submit_order`, then seq), not in the order they were
# written: a post that failed late in the client is spooled after newer posts of its user,
# and must still be replayed before them. lease/peek walk the index and stop after `limit`.
_CREATE_TABLE = """
CREATE TABLE spool (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    topic        TEXT    NOT NULL,
    key          BLOB,
    value        BLOB    NOT NULL,
    post_id      TEXT    NOT NULL,
    enqueued_at  REAL    NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    leased_until REAL,
    submit_order INTEGER NOT NULL DEFAULT 0
)
"""
_CREATE_INDEX = "CREATE INDEX spool_submit_order ON spool (submit_order, seq)"
# a version-1 spool (before submit_order): its rows are older than any new post, so they sort
# first (0), in the order they were written
_MIGRATE_FROM_1 = ("ALTER TABLE spool ADD COLUMN submit_order INTEGER NOT NULL DEFAULT 0",
                   _CREATE_INDEX)
_ORDER = "ORDER BY submit_order, seq"
#: Submit order stamps: strictly increasing in a process, and above any stamp an earlier
#: process gave (it starts at the wall clock in ns, and no process stamps a post per ns).
_SUBMIT_ORDER = itertools.count(time.time_ns())


def next_submit_order() -> int:
    """The next submit-order stamp (``itertools.count`` is atomic under the GIL: no lock)."""
    return next(_SUBMIT_ORDER)
_COLUMNS = "seq, topic, key, value, post_id, enqueued_at, attempts"
_VISIBLE = "(leased_until IS NULL OR leased_until <= ?)"
_SYNC_MODES = ("NORMAL", "FULL", "EXTRA")


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


class SpoolError(RuntimeError):
    """Something is wrong with the spool file; the message says what and how to fix it."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        super().__init__(f"spool_path: {problem}")


class SpoolPathError(SpoolError):
    """The folder is missing, is not a folder, or cannot be written."""


class SpoolCorruptError(SpoolError):
    """The file is not a spool database (corrupt, or some other file)."""


class SpoolLockedError(SpoolError):
    """Another process kept the database locked for longer than ``busy_timeout_s``."""


class SpoolFullError(SpoolError):
    """The spool cannot take a new post: a cap is reached (``field`` is ``spool_rows``,
    ``spool_bytes`` or ``disk_free``, ``limit`` the cap) or the disk is full (``field`` is
    ``disk``). The post was not stored."""

    def __init__(self, path: str, problem: str, field: str = "disk",
                 limit: int | str | None = None) -> None:
        self.field, self.limit = field, limit
        super().__init__(path, problem)


def _not_a_spool(path: str, detail: str) -> SpoolCorruptError:
    return SpoolCorruptError(
        path,
        f"{path} is not a spool database (corrupt or another file); "
        f"move it aside and start a new spool (found: {detail})",
    )


def _translate(path: str, timeout_s: float, exc: sqlite3.Error) -> SpoolError:
    """Turn a sqlite3 exception into a SpoolError that says how to fix it."""
    code = (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF  # primary result code
    text = str(exc)
    folder = os.path.dirname(path)
    if code in (5, 6) or "locked" in text:  # SQLITE_BUSY, SQLITE_LOCKED
        return SpoolLockedError(
            path,
            f"{path} is locked by another process (timeout {timeout_s:g} s); "
            "stop the other process or raise busy_timeout_s",
        )
    if code == 13 or "disk is full" in text:  # SQLITE_FULL
        return SpoolFullError(
            path,
            f"{path}: database or disk is full; free space on the disk holding "
            f"{folder} or choose another path (nothing from the failed call was stored)",
        )
    if code in (11, 26) or "not a database" in text or "malformed" in text:
        return _not_a_spool(path, text)  # SQLITE_CORRUPT, SQLITE_NOTADB
    if code in (3, 8, 14):  # SQLITE_PERM, SQLITE_READONLY, SQLITE_CANTOPEN
        return SpoolPathError(
            path,
            f"{path} cannot be written ({text}); fix the permissions of the file "
            f"and of {folder}, or choose another path",
        )
    return SpoolError(path, f"{path}: sqlite error: {text}")


def _check_folder(path: str) -> None:
    """Fail early, with a clear message, if the spool file cannot live in its folder."""
    folder = os.path.dirname(path)
    if os.path.isdir(path):
        raise SpoolPathError(path, f"{path} is a folder; give a file path such as {path}/spool.db")
    if not os.path.exists(folder):
        raise SpoolPathError(
            path, f"folder {folder} does not exist; create it or choose another path"
        )
    if not os.path.isdir(folder):
        raise SpoolPathError(path, f"{folder} is not a folder; choose a path inside a folder")
    # os.access() says yes to root for any folder, even /proc; creating a file is the
    # only honest test. WAL mode needs it anyway (the -wal and -shm files live there).
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".spool-probe-"):
            pass
    except OSError as exc:
        raise SpoolPathError(
            path,
            f"folder {folder} is not writable ({exc.strerror}); fix its permissions "
            "or choose another path",
        ) from exc


# ---------------------------------------------------------------------------
# The spool
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SpooledRecord:
    """One spooled post, as returned by :meth:`Spool.peek` and :meth:`Spool.lease`."""

    seq: int
    topic: str
    key: bytes | None
    value: bytes
    post_id: str
    enqueued_at: float
    attempts: int


def _row(topic: str, key: Any, value: Any, post_id: str, order: int | None,
         now: float) -> tuple:
    """Validate one row; bytes-like values are stored as BLOBs (never as TEXT)."""
    if not isinstance(topic, str) or not topic:
        raise ValueError(f"topic: must be a non-empty string, got {topic!r}")
    if not isinstance(post_id, str) or not post_id:
        raise ValueError(f"post_id: must be a non-empty string, got {post_id!r}")
    if not isinstance(value, bytes | bytearray | memoryview):
        raise TypeError(f"value: must be bytes, got {type(value).__name__}")
    if key is not None and not isinstance(key, bytes | bytearray | memoryview):
        raise TypeError(f"key: must be bytes or None, got {type(key).__name__}")
    if order is None:
        order = next_submit_order()
    elif not isinstance(order, int) or order < 0:
        raise ValueError(f"submit_order: must be an int >= 0, got {order!r}")
    return (topic, None if key is None else bytes(key), bytes(value), post_id, now, order)


class Spool:
    """A durable FIFO of posts in a SQLite file. See the module docstring."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout_s: float = 5.0,
        synchronous: str = "NORMAL",
        autocheckpoint: bool = True,
        max_rows: int = DEFAULT_MAX_ROWS,
        max_bytes: int = DEFAULT_MAX_BYTES,
        min_free_bytes: int = DEFAULT_MIN_FREE_BYTES,
    ) -> None:
        self.path = os.path.abspath(os.fspath(path))
        if busy_timeout_s < 0:
            raise ValueError(f"busy_timeout_s: must be >= 0, got {busy_timeout_s}")
        for name, value, least in (("max_rows", max_rows, 1), ("max_bytes", max_bytes, 1),
                                   ("min_free_bytes", min_free_bytes, 0)):
            if type(value) is not int or value < least:
                raise ValueError(f"{name}: must be an integer >= {least}, got {value!r}")
        self.max_rows, self.max_bytes, self.min_free_bytes = max_rows, max_bytes, min_free_bytes
        self._rows = 0  # the counters: see "Size caps" in the module docstring
        self._bytes = 0
        self._free_checked_at = -1e9  # time.monotonic() of the last statvfs
        self._free_bytes = 0
        synchronous = synchronous.upper()
        if synchronous not in _SYNC_MODES:
            raise ValueError(f"synchronous: must be one of {_SYNC_MODES}, got {synchronous!r}")
        self.busy_timeout_s = busy_timeout_s
        self.synchronous = synchronous
        self.autocheckpoint = autocheckpoint
        self._lock = threading.Lock()
        self._checkpoint_conn: sqlite3.Connection | None = None  # guarded by _checkpoint_lock
        self._checkpoint_lock = threading.Lock()
        # group commit (see sync()): commits counted, and how many of them an fsync covers
        self._commits = 0
        self._synced = 0
        self._syncing = False
        self._sync_cv = threading.Condition()
        _check_folder(self.path)
        try:
            # isolation_level=None: no hidden transactions, we BEGIN/COMMIT ourselves.
            self._conn: sqlite3.Connection | None = sqlite3.connect(
                self.path,
                timeout=busy_timeout_s,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            raise _translate(self.path, busy_timeout_s, exc) from exc
        try:
            self._open()
        except BaseException:
            self._conn.close()
            self._conn = None
            raise

    def _open(self) -> None:
        """Check the file is ours (read-only), then switch to WAL and create the table."""
        assert self._conn is not None
        try:
            # Look before writing anything: never convert another app's database.
            if self._schema_ok():
                check = self._conn.execute("PRAGMA quick_check").fetchone()[0]
                if check != "ok":
                    raise _not_a_spool(self.path, f"quick_check: {check}")
            mode = self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise SpoolError(
                    self.path,
                    f"{self.path}: could not switch to WAL mode (got {mode!r}); "
                    "put the spool on a local disk",
                )
            self._conn.execute(f"PRAGMA synchronous={self.synchronous}")
            if not self.autocheckpoint:
                self._conn.execute("PRAGMA wal_autocheckpoint=0")
            if not self._schema_ok():
                with self._tx():  # BEGIN IMMEDIATE: two processes may race to create it
                    if not self._schema_ok():
                        self._conn.execute(_CREATE_TABLE)
                        self._conn.execute(_CREATE_INDEX)
                        self._conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            self._recount(self._conn)  # the only full count: the counters go on from here
        except sqlite3.Error as exc:
            raise _translate(self.path, self.busy_timeout_s, exc) from exc

    def _schema_ok(self) -> bool:
        """True for a spool, False for an empty (new) file, SpoolError for anything else."""
        assert self._conn is not None
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        tables = {r[0] for r in self._conn.execute("SELECT name FROM sqlite_master")}
        if version == SCHEMA_VERSION and "spool" in tables:
            return True
        if version == 1 and "spool" in tables:
            with self._tx():
                for sql in _MIGRATE_FROM_1:
                    self._conn.execute(sql)
                self._conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            return True
        if version == 0 and not tables:
            return False
        if version > SCHEMA_VERSION:
            raise SpoolError(
                self.path,
                f"{self.path} has spool schema version {version}, this lab_kit knows "
                f"{SCHEMA_VERSION}; upgrade lab_kit or move the file aside",
            )
        raise _not_a_spool(self.path, f"user_version={version}, tables={sorted(tables)}")

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction. IMMEDIATE takes the write lock up front (no deadlock)."""
        assert self._conn is not None
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
            self._conn.execute("COMMIT")
        except BaseException:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise

    @contextmanager
    def _locked(self, write: bool) -> Iterator[sqlite3.Connection]:
        """Hold the thread lock (and a transaction if writing); translate sqlite errors."""
        with self._lock:
            if self._conn is None:
                raise SpoolError(self.path, f"{self.path}: the spool is closed")
            try:
                if write:
                    with self._tx() as conn:
                        yield conn
                else:
                    yield self._conn
            except sqlite3.Error as exc:
                raise _translate(self.path, self.busy_timeout_s, exc) from exc

    def _recount(self, conn: sqlite3.Connection) -> int:
        """Set the counters from a full scan (at open, and in :meth:`count`)."""
        rows, size = conn.execute(
            "SELECT COUNT(*), TOTAL(length(value) + IFNULL(length(key), 0)) FROM spool"
        ).fetchone()
        self._rows, self._bytes = int(rows), int(size)
        return self._rows

    # -- the caps ------------------------------------------------------------

    @property
    def rows(self) -> int:
        """Rows in the spool (leased or not), from the counter: no query, no lock."""
        return self._rows

    @property
    def payload_bytes(self) -> int:
        """Bytes of keys and values in the spool, from the counter: no query, no lock."""
        return self._bytes

    def check_room(self) -> None:
        """Raise :class:`SpoolFullError` if a **new** post should be refused: ``max_rows`` or
        ``max_bytes`` reached, or less than ``min_free_bytes`` free on the disk (asked of the
        kernel at most once a second). Reads counters only: cheap enough for every request."""
        if self._rows >= self.max_rows:
            raise SpoolFullError(self.path, f"{self.path} holds {self._rows} posts, the limit "
                                 f"is max_rows={self.max_rows}; new posts are refused until "
                                 "the replay drains it", "spool_rows", self.max_rows)
        if self._bytes >= self.max_bytes:
            raise SpoolFullError(self.path, f"{self.path} holds {self._bytes} bytes of posts, "
                                 f"the limit is max_bytes={self.max_bytes}; new posts are "
                                 "refused until the replay drains it", "spool_bytes",
                                 self.max_bytes)
        if self.min_free_bytes and self.free_bytes() < self.min_free_bytes:
            raise SpoolFullError(self.path, f"{self._free_bytes} bytes free on the disk of "
                                 f"{os.path.dirname(self.path)}, less than min_free_bytes="
                                 f"{self.min_free_bytes}; free space there", "disk_free",
                                 self.min_free_bytes)

    def free_bytes(self, max_age_s: float = 1.0) -> int:
        """Bytes free (for unprivileged users) on the spool's disk, at most ``max_age_s`` old."""
        now = time.monotonic()
        if now - self._free_checked_at >= max_age_s:
            st = os.statvfs(os.path.dirname(self.path))
            self._free_bytes = st.f_bavail * st.f_frsize
            self._free_checked_at = now
        return self._free_bytes

    # -- writing -------------------------------------------------------------

    def append(self, topic: str, key: bytes | None, value: bytes, post_id: str,
               submit_order: int | None = None) -> int:
        """Store one post; returns its ``seq`` once it is committed. ``submit_order`` is
        where it sorts for replay (default: now, after every post stamped before)."""
        row = _row(topic, key, value, post_id, submit_order, time.time())
        with self._locked(write=True) as conn:
            cur = conn.execute(
                "INSERT INTO spool (topic, key, value, post_id, enqueued_at, submit_order) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                row,
            )
            seq = int(cur.lastrowid or 0)
        self._added(1, len(row[2]) + len(row[1] or b""))
        return seq

    def _added(self, rows: int, size: int) -> None:
        with self._lock:  # += is not atomic across threads
            self._rows += rows
            self._bytes += size
            self._commits += 1

    def append_many(self, rows: Iterable[tuple]) -> int:
        """Store many ``(topic, key, value, post_id[, submit_order])`` rows in one transaction
        (all or none)."""
        now = time.time()
        checked = [_row(*r, now) if len(r) == 5 else _row(*r, None, now)
                   for r in rows]  # validate before taking any lock
        if not checked:
            return 0
        with self._locked(write=True) as conn:
            conn.executemany(
                "INSERT INTO spool (topic, key, value, post_id, enqueued_at, submit_order) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                checked,
            )
        self._added(len(checked), sum(len(r[2]) + len(r[1] or b"") for r in checked))
        return len(checked)

    # -- replay ----------------------------------------------------------------

    def peek(self, limit: int = 500) -> list[SpooledRecord]:
        """The oldest ``limit`` records not under a live lease, by seq; changes nothing."""
        with self._locked(write=False) as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM spool WHERE {_VISIBLE} {_ORDER} LIMIT ?",
                (time.time(), limit),
            ).fetchall()
        return [SpooledRecord(*r) for r in rows]

    def lease(self, limit: int = 500, lease_s: float = 30.0) -> list[SpooledRecord]:
        """Like :meth:`peek`, but hides the rows from other replayers for ``lease_s`` s.

        Select and mark happen in one IMMEDIATE transaction, so two processes leasing
        at the same moment get disjoint rows.
        """
        now = time.time()
        with self._locked(write=True) as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM spool WHERE {_VISIBLE} {_ORDER} LIMIT ?",
                (now, limit),
            ).fetchall()
            conn.executemany(
                "UPDATE spool SET leased_until = ? WHERE seq = ?",
                [(now + lease_s, r[0]) for r in rows],
            )
        return [SpooledRecord(*r) for r in rows]

    def ack(self, seqs: Iterable[int]) -> int:
        """Kafka acknowledged these: delete them. Returns how many were deleted."""
        params = [int(s) for s in seqs]
        if not params:
            return 0
        rows = size = 0
        with self._locked(write=True) as conn:  # one transaction: counted == deleted
            for i in range(0, len(params), _CHUNK):
                chunk = params[i:i + _CHUNK]
                marks = ",".join("?" * len(chunk))
                n, b = conn.execute(
                    "SELECT COUNT(*), TOTAL(length(value) + IFNULL(length(key), 0)) "
                    f"FROM spool WHERE seq IN ({marks})", chunk).fetchone()
                conn.execute(f"DELETE FROM spool WHERE seq IN ({marks})", chunk)
                rows, size = rows + int(n), size + int(b)
        self._added(-rows, -size)
        return rows

    def nack(self, seqs: Iterable[int]) -> int:
        """Sending these failed: ``attempts += 1``, lease dropped, they stay for a retry."""
        return self._update(
            "UPDATE spool SET attempts = attempts + 1, leased_until = NULL WHERE seq = ?", seqs
        )

    def release(self, seqs: Iterable[int]) -> int:
        """Give leased rows back untouched (not tried): they are visible again at once."""
        return self._update("UPDATE spool SET leased_until = NULL WHERE seq = ?", seqs)

    def _update(self, sql: str, seqs: Iterable[int]) -> int:
        params = [(int(s),) for s in seqs]
        if not params:
            return 0
        with self._locked(write=True) as conn:
            return conn.executemany(sql, params).rowcount

    # -- looking -------------------------------------------------------------

    def _scalar(self, sql: str, *params: Any) -> Any:
        with self._locked(write=False) as conn:
            return conn.execute(sql, params).fetchone()[0]

    def count(self) -> int:
        """All spooled records, leased or not: an exact ``COUNT(*)`` (a scan of the table; it
        also corrects :attr:`rows`). Cheap questions: :attr:`rows`, :meth:`is_empty`."""
        with self._locked(write=False) as conn:
            return self._recount(conn)

    def is_empty(self) -> bool:
        """No record at all, leased or not: one row looked up, where ``len()`` counts them all
        (the replayer asks after every batch)."""
        return self._scalar("SELECT NOT EXISTS (SELECT 1 FROM spool)") == 1

    def __len__(self) -> int:
        return self.count()

    def pending_bytes(self) -> int:
        """Bytes of keys and values waiting to be replayed."""
        return int(self._scalar("SELECT TOTAL(length(value) + IFNULL(length(key), 0)) FROM spool"))

    def oldest_age_s(self) -> float | None:
        """Seconds the oldest record has waited, or None when the spool is empty."""
        oldest = self._scalar("SELECT MIN(enqueued_at) FROM spool")
        return None if oldest is None else max(0.0, time.time() - oldest)

    def post_ids(self) -> list[str]:
        """Every spooled post_id in seq order (for zero-loss audits)."""
        with self._locked(write=False) as conn:
            return [r[0] for r in conn.execute(f"SELECT post_id FROM spool {_ORDER}")]

    def stats(self) -> dict[str, Any]:
        """A snapshot for dashboards and the doctor."""
        leased = self._scalar(f"SELECT COUNT(*) FROM spool WHERE NOT {_VISIBLE}", time.time())
        files = [self.path, self.path + "-wal"]
        return {
            "path": self.path,
            "count": self.count(),
            "leased": int(leased),
            "pending_bytes": self.pending_bytes(),
            "oldest_age_s": self.oldest_age_s(),
            "max_attempts": int(self._scalar("SELECT IFNULL(MAX(attempts), 0) FROM spool")),
            "file_bytes": sum(os.path.getsize(f) for f in files if os.path.exists(f)),
            "synchronous": self.synchronous,
        }

    # -- group commit ----------------------------------------------------------

    def sync(self) -> int:
        """fsync the WAL: every row this object committed before the call is on the disk when
        it returns (it survives power loss too, not only a crash of this process). Callers
        that arrive while an fsync runs wait for the next one, so one fsync serves all of
        them: a group commit, without ``synchronous="FULL"``'s fsync inside every append.
        Returns how many commits the fsync it waited for covered."""
        with self._sync_cv:
            target = self._commits
            while self._synced < target:
                if not self._syncing:
                    self._syncing = True
                    break
                self._sync_cv.wait()
            else:
                return self._synced
        upto = self._commits  # read before the fsync: every commit counted is in the file
        done = False
        try:
            if self._conn is None:
                raise SpoolError(self.path, f"{self.path}: the spool is closed")
            # the WAL holds the rows not checkpointed yet, the file those that are
            for name in (self.path + "-wal", self.path):
                try:
                    fd = os.open(name, os.O_RDONLY)
                except FileNotFoundError:
                    continue
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            done = True
        finally:  # a failed fsync covers nothing: the next caller tries again
            with self._sync_cv:
                self._syncing = False
                if done:
                    self._synced = max(self._synced, upto)
                self._sync_cv.notify_all()
        return upto

    # -- checkpoints -----------------------------------------------------------

    def checkpoint(self) -> tuple[int, int]:
        """Copy what the WAL holds into the database file (a PASSIVE checkpoint: writers go
        on meanwhile). Returns ``(frames in the WAL, frames copied)``. Needed when the spool
        was opened with ``autocheckpoint=False``; harmless otherwise."""
        with self._checkpoint_lock:
            if self._conn is None:
                raise SpoolError(self.path, f"{self.path}: the spool is closed")
            try:
                if self._checkpoint_conn is None:
                    self._checkpoint_conn = sqlite3.connect(
                        self.path, timeout=self.busy_timeout_s, isolation_level=None,
                        check_same_thread=False)
                _busy, frames, copied = self._checkpoint_conn.execute(
                    "PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            except sqlite3.Error as exc:
                raise _translate(self.path, self.busy_timeout_s, exc) from exc
        return int(frames), int(copied)

    # -- lifecycle -----------------------------------------------------------

    def close(self) -> None:
        """Close the connection; safe to call twice. Committed rows are already on disk."""
        with self._checkpoint_lock:
            if self._checkpoint_conn is not None:
                self._checkpoint_conn.close()
                self._checkpoint_conn = None
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._conn is None else "open"
        return f"Spool({self.path!r}, {state})"
