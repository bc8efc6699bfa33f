"""What a party remembers in its state directory: the counter no confidential VM has.

Neither TDX nor SEV-SNP (nor Nitro) gives a VM a trusted monotonic counter, so a host can
restore an old copy of the enclave's state directory, or delete it and start again, and the
enclave cannot tell. The parties can: each SDK keeps, per policy, the newest journal head it
has verified, and refuses an enclave whose journal does not extend it::

    remembered  #0 ── … ── #7 (sha a1…)
    enclave     #0 ── … ── #7 (sha a1…) ── #8 ── #9        extends it: remember #9
    enclave     #0 ── … ── #5                              rollback: refused
    enclave     #0 ── … ── #7 (sha 9c…) ── …               fork: refused
    enclave     #0' (another run of the policy)            a new run: refused unless every
                                                           run it saw has ended and the
                                                           policy allows another release

The same SQLite database (standard library ``sqlite3``, WAL mode, one transaction per
update, so concurrent processes of one party serialise) holds the releases this party
approved per policy (a provider never approves more than ``release.max_releases``), the
owner's ε ledger per dataset across policies, and the resume records of unfinished uploads,
which hold their data keys: the file is private to the party (mode 0600), like its key file.

Losing the state directory loses this memory: the party then accepts the first journal it
sees again and its ledger starts empty (see docs/state.md, "What a party keeps").
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib

from cctrain.errors import CctrainError, InputError
from cctrain.journal import TERMINAL, JournalHead, Record, RunState
from cctrain.policy import Policy

__all__ = [
    "DB_NAME",
    "ENDED",
    "BudgetExceededError",
    "ForkOrRollbackError",
    "Grant",
    "PartyMemory",
    "ledger_summary",
    "ReleaseLimitError",
    "RunMemory",
    "dataset_key",
    "policy_grant",
]

DB_NAME = "cctrain.sqlite3"
CONFIG_NAME = "config.toml"
#: 2: ledger rows name the file they were granted for (plaintext_sha256); dataset names.
SCHEMA_VERSION = 2
#: Phases after which a run of a policy changes no more.
ENDED = TERMINAL

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    policy_digest   BLOB NOT NULL,
    run_id          BLOB NOT NULL,
    genesis_sha256  BLOB NOT NULL,
    signing_key     BLOB NOT NULL,
    head_seq        INTEGER NOT NULL,
    head_sha256     BLOB NOT NULL,
    phase           TEXT NOT NULL,
    first_seen_ms   INTEGER NOT NULL,
    updated_ms      INTEGER NOT NULL,
    PRIMARY KEY (policy_digest, run_id)
);
CREATE TABLE IF NOT EXISTS approvals (
    policy_digest   BLOB NOT NULL,
    party_id        TEXT NOT NULL,
    manifest_sha256 BLOB NOT NULL,
    run_id          BLOB NOT NULL,
    release_index   INTEGER NOT NULL,
    approved_ms     INTEGER NOT NULL,
    PRIMARY KEY (policy_digest, party_id, manifest_sha256),
    UNIQUE (policy_digest, party_id, release_index)
);
CREATE TABLE IF NOT EXISTS ledger (
    dataset_sha256  BLOB NOT NULL,
    policy_digest   BLOB NOT NULL,
    policy_name     TEXT NOT NULL,
    party_id        TEXT NOT NULL,
    shard_id        TEXT NOT NULL,
    epsilon         REAL,              -- NULL: no DP (unbounded)
    delta           REAL,
    status          TEXT NOT NULL,     -- uploaded | approved | withdrawn | withdrawn-counted
    updated_ms      INTEGER NOT NULL,
    plaintext_sha256 BLOB NOT NULL,    -- the receipt's (salted) commitment to the shard file
    PRIMARY KEY (dataset_sha256, policy_digest, shard_id)
);
CREATE TABLE IF NOT EXISTS uploads (   -- resumable uploads: the signed header and data key
    policy_digest   BLOB NOT NULL,
    party_id        TEXT NOT NULL,
    shard_id        TEXT NOT NULL,
    header          BLOB NOT NULL,
    signature       BLOB NOT NULL,
    data_key        BLOB NOT NULL,
    plaintext_sha256 BLOB NOT NULL,    -- the file's size+mtime fingerprint (resume the same file)
    PRIMARY KEY (policy_digest, party_id, shard_id)
);
CREATE TABLE IF NOT EXISTS datasets (  -- a label the owner gave a dataset (upload --dataset)
    dataset_sha256  BLOB PRIMARY KEY,
    label           TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS budgets (
    dataset_sha256  BLOB PRIMARY KEY,
    epsilon         REAL NOT NULL,
    label           TEXT NOT NULL
);
"""


class ForkOrRollbackError(CctrainError):
    """The enclave's journal does not extend the newest head this party verified."""


class JournalBehindError(ForkOrRollbackError):
    """The journal shown ends before the head remembered: a rollback, unless the journal was
    fetched before another process of this party remembered a newer head (fetch again)."""


class ReleaseLimitError(CctrainError):
    """Approving would exceed the releases the policy allows, counted by this party."""


class BudgetExceededError(CctrainError):
    """An upload or approval would grant more ε of a dataset than its lifetime budget."""


@dataclass(frozen=True)
class RunMemory:
    """The newest verified point of one run (journal) of a policy."""

    policy_digest: bytes
    run_id: bytes
    genesis_sha256: bytes
    signing_key: bytes
    head: JournalHead
    phase: str

    def describe(self) -> str:
        return (
            f"run {self.run_id.hex()[:12]}… up to entry #{self.head.seq} "
            f"({self.head.sha256.hex()[:16]}…, phase {self.phase})"
        )


@dataclass(frozen=True)
class Grant:
    """ε of one dataset granted to one policy (None: no DP, so no bound)."""

    dataset_sha256: bytes
    policy_digest: bytes
    policy_name: str
    shard_id: str
    epsilon: float | None
    status: str

    @property
    def epsilon_value(self) -> float:
        return math.inf if self.epsilon is None else self.epsilon


DATASET_LABEL_TAG = b"cctrain/dataset-label/v1\x00"
DATASET_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}")


def dataset_key(label: str) -> bytes:
    """The ledger key of a dataset the owner names (``upload --dataset``) instead of letting
    its file bytes name it: every export of the same rows (another column order, CSV instead
    of NPZ, a fresh shuffle) is then one dataset with one lifetime budget."""
    if not DATASET_LABEL.fullmatch(label):
        raise InputError(
            f"dataset label {label!r} must match {DATASET_LABEL.pattern} (letters, digits and "
            "._:/@+-, at most 128 characters)"
        )
    return hashlib.sha256(DATASET_LABEL_TAG + label.encode()).digest()


def policy_grant(policy: Policy) -> float | None:
    """The most ε one dataset can spend under ``policy``: its target per release, times the
    releases it allows (sequential composition); None without DP."""
    if not policy.privacy.get("enabled"):
        return None
    return float(policy.privacy["target_epsilon"]) * policy.max_releases


def _now_ms() -> int:
    return int(time.time() * 1000)


def _fmt_eps(eps: float | None) -> str:
    return "unbounded (no DP)" if eps is None or math.isinf(eps) else f"{eps:g}"


def _schema_version(db: sqlite3.Connection) -> str | None:
    try:
        row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    except sqlite3.OperationalError:  # a new database: no meta table yet
        return None
    return None if row is None else str(row[0])


def _migrate_from_1(db: sqlite3.Connection) -> None:
    """Version 1 named every dataset by its file's commitment: that is each row's file."""
    db.execute("BEGIN IMMEDIATE")
    try:
        if _schema_version(db) == "1":  # another process may have migrated meanwhile
            db.execute("ALTER TABLE ledger ADD COLUMN plaintext_sha256 BLOB")
            db.execute("UPDATE ledger SET plaintext_sha256 = dataset_sha256")
            db.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


#: Ledger statuses whose ε no longer counts: a shard withdrawn before training, by a provider
#: whose approval every release needs (see :meth:`PartyMemory.grant`).
REFUNDED = frozenset({"withdrawn"})


class PartyMemory:
    """The party's SQLite database in its state directory (see the module doc)."""

    def __init__(self, state_dir: str | Path) -> None:
        self.state_dir = Path(state_dir)
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.path = self.state_dir / DB_NAME
            # Created private before SQLite opens it (its -wal and -shm files inherit the mode):
            # it holds the resume records' data keys.
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # a remembered head survives a power cut
            version = _schema_version(db)
            if version == "1":
                _migrate_from_1(db)
            db.executescript(_SCHEMA)
            db.execute(
                "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
            (version,) = db.execute(
                "SELECT value FROM meta WHERE key = 'schema_version'"
            ).fetchone()
        except (OSError, sqlite3.Error) as exc:
            raise InputError(
                f"the party state directory {self.state_dir} cannot be used: {exc}"
            ) from None
        if version != str(SCHEMA_VERSION):
            db.close()
            raise InputError(
                f"{self.path} has schema version {version}; this cctrain reads {SCHEMA_VERSION}"
            )
        self._db = db

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> PartyMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction: another process of this party waits, then sees it."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # ------------------------------------------------------------------ journal heads

    def runs(self, policy_digest: bytes) -> list[RunMemory]:
        rows = self._db.execute(
            "SELECT run_id, genesis_sha256, signing_key, head_seq, head_sha256, phase "
            "FROM runs WHERE policy_digest = ? ORDER BY first_seen_ms, run_id",
            (policy_digest,),
        ).fetchall()
        return [
            RunMemory(policy_digest, r[0], r[1], r[2], JournalHead(int(r[3]), r[4]), r[5])
            for r in rows
        ]

    def knows_genesis(self, policy_digest: bytes, genesis_sha256: bytes) -> bool:
        """Whether this party verified (with its evidence) the run this genesis begins."""
        row = self._db.execute(
            "SELECT 1 FROM runs WHERE policy_digest = ? AND genesis_sha256 = ?",
            (policy_digest, genesis_sha256),
        ).fetchone()
        return row is not None

    def observe(self, policy: Policy, view: RunState, records: Sequence[Record]) -> RunMemory:
        """Check that a verified journal (``view = replay(records, policy)``) extends what this
        party remembers of ``policy``, then remember its head; raise
        :class:`ForkOrRollbackError` saying what it saw otherwise."""
        digest = policy.digest
        genesis_sha = records[0].sha256
        with self._transaction() as db:
            runs = self.runs(digest)
            known = next((r for r in runs if r.run_id == view.run_id), None)
            if known is not None:
                self._check_extends(known, view, records, genesis_sha)
            elif runs:
                self._check_new_run(policy, runs, view)
            now = _now_ms()
            if known is None:
                db.execute(
                    "INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        digest,
                        view.run_id,
                        genesis_sha,
                        view.signing_public_key,
                        view.head.seq,
                        view.head.sha256,
                        view.phase,
                        now,
                        now,
                    ),
                )
            elif view.head.seq > known.head.seq:
                db.execute(
                    "UPDATE runs SET head_seq = ?, head_sha256 = ?, phase = ?, updated_ms = ? "
                    "WHERE policy_digest = ? AND run_id = ?",
                    (view.head.seq, view.head.sha256, view.phase, now, digest, view.run_id),
                )
        return RunMemory(
            digest, view.run_id, genesis_sha, view.signing_public_key, view.head, view.phase
        )

    @staticmethod
    def _check_extends(
        known: RunMemory, view: RunState, records: Sequence[Record], genesis_sha: bytes
    ) -> None:
        shown = f"the enclave shows entry #{view.head.seq} ({view.head.sha256.hex()[:16]}…)"
        if genesis_sha != known.genesis_sha256 or view.signing_public_key != known.signing_key:
            raise ForkOrRollbackError(
                f"fork or rollback: this party saw {known.describe()}; the enclave's journal "
                "has the same run id under another genesis entry"
            )
        if view.head.seq < known.head.seq:
            raise JournalBehindError(
                f"fork or rollback: this party saw {known.describe()}; {shown}, an earlier "
                "state: the host restored an old copy of the enclave's state or cut its "
                "journal. Refusing: it could re-run steps or release again"
            )
        if records[known.head.seq].sha256 != known.head.sha256:
            got = records[known.head.seq].sha256.hex()[:16]
            raise ForkOrRollbackError(
                f"fork or rollback: this party saw {known.describe()}; the enclave's entry "
                f"#{known.head.seq} is another one ({got}…): its journal forked from the one "
                "this party verified. Refusing"
            )

    @staticmethod
    def _check_new_run(policy: Policy, runs: list[RunMemory], view: RunState) -> None:
        unfinished = [r for r in runs if r.phase not in ENDED]
        released = [r for r in runs if r.phase == "released"]
        new = f"the enclave shows a new run {view.run_id.hex()[:12]}… of this policy"
        if unfinished:
            raise ForkOrRollbackError(
                f"fork or rollback: this party saw {unfinished[0].describe()}, which has not "
                f"ended; {new}: the host deleted or replaced the enclave's state. Refusing (a "
                "new run is accepted only by a party that saw the last one end)"
            )
        if len(released) >= policy.max_releases:
            raise ForkOrRollbackError(
                f"fork or rollback: this party saw {len(released)} released run(s) of this "
                f"policy ({released[-1].describe()}), and it allows {policy.max_releases} "
                f"release(s); {new}. Refusing"
            )

    def forget_run(self, policy_digest: bytes, run_id_prefix: str) -> RunMemory:
        """Forget one run of a policy this party remembers (``cctrain memory forget``), so
        that a new run of the policy is accepted although that one never ended: for a run the
        consortium knows was abandoned (a trial, a host that was replaced).

        Only a run this party last saw collecting or training: one that built a manifest may
        be released without this party looking (end it with a veto instead), and a released
        one counts against ``release.max_releases``. The approvals and the ε ledger stay: a
        provider still approves no more releases than the policy allows, and ε granted stays
        granted."""
        with self._transaction() as db:
            runs = [r for r in self.runs(policy_digest) if r.run_id.hex().startswith(run_id_prefix)]
            if len(run_id_prefix) < 8 or len(runs) != 1:
                raise InputError(
                    f"no single remembered run of this policy has an id starting {run_id_prefix!r} "
                    "(give at least 8 hex digits; cctrain memory lists them)"
                )
            (run,) = runs
            if run.phase == "released":
                raise InputError(
                    f"{run.describe()} was released: a released run is never forgotten (it "
                    "counts against the policy's release.max_releases)"
                )
            if run.phase in ENDED:
                raise InputError(f"{run.describe()} ended: it does not block a new run")
            if run.phase not in ("collecting", "training"):
                raise InputError(
                    f"{run.describe()} built a manifest, which may be released without this "
                    "party looking: it is not forgotten. A provider the release rule names can "
                    "end it with a veto (cctrain release veto)"
                )
            db.execute(
                "DELETE FROM runs WHERE policy_digest = ? AND run_id = ?",
                (policy_digest, run.run_id),
            )
            return run

    def all_runs(self) -> list[RunMemory]:
        rows = self._db.execute(
            "SELECT policy_digest, run_id, genesis_sha256, signing_key, head_seq, head_sha256, "
            "phase FROM runs ORDER BY first_seen_ms, run_id"
        ).fetchall()
        return [RunMemory(r[0], r[1], r[2], r[3], JournalHead(int(r[4]), r[5]), r[6]) for r in rows]

    # ------------------------------------------------------------------ approvals

    def approvals(self, policy_digest: bytes, party_id: str) -> list[tuple[bytes, bytes, int]]:
        """(manifest sha256, run id, release index) of every release ``party_id`` approved."""
        return [
            (r[0], r[1], int(r[2]))
            for r in self._db.execute(
                "SELECT manifest_sha256, run_id, release_index FROM approvals "
                "WHERE policy_digest = ? AND party_id = ? ORDER BY release_index",
                (policy_digest, party_id),
            )
        ]

    def reserve_approval(
        self, policy: Policy, party_id: str, run_id: bytes, manifest_sha256: bytes
    ) -> int:
        """The release index to sign for approving ``manifest_sha256``: the same one again for
        a manifest already approved, else the next, refused past ``max_releases``. Written
        before the approval is sent: a crash then counts one release too many, never too few."""
        digest = policy.digest
        with self._transaction() as db:
            done = self.approvals(digest, party_id)
            for manifest, _, index in done:
                if manifest == manifest_sha256:
                    return index
            if len(done) >= policy.max_releases:
                listed = ", ".join(f"#{i} manifest {m.hex()[:16]}…" for m, _, i in done)
                raise ReleaseLimitError(
                    f"this party already approved {len(done)} release(s) of this policy "
                    f"({listed}); it allows {policy.max_releases}. Not approving another"
                )
            index = len(done) + 1
            db.execute(
                "INSERT INTO approvals VALUES (?, ?, ?, ?, ?, ?)",
                (digest, party_id, manifest_sha256, run_id, index, _now_ms()),
            )
            return index

    # ------------------------------------------------------------------ resume records

    def save_resume(
        self,
        policy_digest: bytes,
        party_id: str,
        shard_id: str,
        *,
        header: bytes,
        signature: bytes,
        data_key: bytes,
        plaintext_sha256: bytes,
    ) -> None:
        """What resuming an upload needs (its signed header and data key), kept until the
        receipt or a refusal."""
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO uploads VALUES (?, ?, ?, ?, ?, ?, ?)",
                (policy_digest, party_id, shard_id, header, signature, data_key, plaintext_sha256),
            )

    def load_resume(
        self, policy_digest: bytes, party_id: str, shard_id: str
    ) -> tuple[bytes, bytes, bytes, bytes] | None:
        """(header, signature, data key, plaintext sha256) of an unfinished upload."""
        row = self._db.execute(
            "SELECT header, signature, data_key, plaintext_sha256 FROM uploads "
            "WHERE policy_digest = ? AND party_id = ? AND shard_id = ?",
            (policy_digest, party_id, shard_id),
        ).fetchone()
        return None if row is None else (bytes(row[0]), bytes(row[1]), bytes(row[2]), bytes(row[3]))

    def drop_resume(self, policy_digest: bytes, party_id: str, shard_id: str) -> None:
        with self._transaction() as db:
            db.execute(
                "DELETE FROM uploads WHERE policy_digest = ? AND party_id = ? AND shard_id = ?",
                (policy_digest, party_id, shard_id),
            )

    # ------------------------------------------------------------------ ε ledger

    def lifetime_budget(self, dataset_sha256: bytes) -> float | None:
        """The dataset's lifetime ε budget: set for it (``cctrain ledger budget``), else the
        ``[ledger] lifetime_epsilon`` of ``config.toml`` in the state directory, else none."""
        row = self._db.execute(
            "SELECT epsilon FROM budgets WHERE dataset_sha256 = ?", (dataset_sha256,)
        ).fetchone()
        if row is not None:
            return float(row[0])
        return self._default_budget()

    def _default_budget(self) -> float | None:
        path = self.state_dir / CONFIG_NAME
        try:
            doc = tomllib.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise InputError(f"{path}: {exc}") from None
        value = doc.get("ledger", {}).get("lifetime_epsilon")
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise InputError(f"{path}: ledger.lifetime_epsilon must be a number ≥ 0")
        return float(value)

    def set_budget(self, dataset_sha256: bytes, epsilon: float, *, label: str) -> None:
        if not (epsilon >= 0 and math.isfinite(epsilon)):
            raise InputError(f"a lifetime ε budget must be a finite number ≥ 0, got {epsilon}")
        with self._transaction() as db:
            db.execute(
                "INSERT INTO budgets VALUES (?, ?, ?) ON CONFLICT(dataset_sha256) "
                "DO UPDATE SET epsilon = excluded.epsilon, label = excluded.label",
                (dataset_sha256, epsilon, label),
            )

    def grants(self, dataset_sha256: bytes | None = None) -> list[Grant]:
        sql = (
            "SELECT dataset_sha256, policy_digest, policy_name, shard_id, epsilon, status "
            "FROM ledger"
        )
        args: tuple[Any, ...] = ()
        if dataset_sha256 is not None:
            sql += " WHERE dataset_sha256 = ?"
            args = (dataset_sha256,)
        rows = self._db.execute(sql + " ORDER BY updated_ms, policy_digest", args).fetchall()
        return [Grant(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows]

    def granted(self, dataset_sha256: bytes) -> float:
        """ε of the dataset granted in all (inf: a policy without DP holds it): each live shard
        that holds it, in every policy; refunded withdrawals do not count."""
        return sum(g.epsilon_value for g in self.grants(dataset_sha256) if g.status not in REFUNDED)

    def label(self, dataset_sha256: bytes) -> str:
        row = self._db.execute(
            "SELECT label FROM datasets WHERE dataset_sha256 = ?", (dataset_sha256,)
        ).fetchone()
        return "" if row is None else str(row[0])

    def budgets(self) -> list[tuple[bytes, float, str]]:
        return [
            (r[0], float(r[1]), r[2])
            for r in self._db.execute("SELECT dataset_sha256, epsilon, label FROM budgets")
        ]

    def grant(
        self,
        policy: Policy,
        *,
        dataset_sha256: bytes,
        plaintext_sha256: bytes,
        party_id: str,
        shard_id: str,
        status: str,
        what: str,
        label: str | None = None,
    ) -> bool:
        """Record that ``policy`` may spend ε of this dataset through the shard ``shard_id``
        (the file ``plaintext_sha256``), after checking that with it the dataset stays within
        its lifetime budget; ``what`` names the decision in the error. True when this call
        created the grant (no process of this party had recorded it).

        Every live shard counts: two shards of one dataset in one policy (two exports of the
        same rows) put each row in the training set twice, and each pays the policy's ε.
        """
        digest = policy.digest
        eps = policy_grant(policy)
        with self._transaction() as db:
            existed = (
                db.execute(
                    "SELECT 1 FROM ledger WHERE dataset_sha256 = ? AND policy_digest = ? "
                    "AND shard_id = ?",
                    (dataset_sha256, digest, shard_id),
                ).fetchone()
                is not None
            )
            others = [
                g
                for g in self.grants(dataset_sha256)
                if not (g.policy_digest == digest and g.shard_id == shard_id)
                and g.status not in REFUNDED
            ]
            budget = self.lifetime_budget(dataset_sha256)
            if budget is not None:
                spent = sum(g.epsilon_value for g in others)
                total = spent + (math.inf if eps is None else eps)
                if total > budget * (1 + 1e-12):
                    spent_by = "; ".join(
                        f"{g.policy_name} ({g.policy_digest.hex()[:12]}…, shard {g.shard_id}): "
                        f"ε {_fmt_eps(g.epsilon)}"
                        for g in others
                    )
                    raise BudgetExceededError(
                        f"refusing to {what}: policy {policy.name!r} may spend ε "
                        f"{_fmt_eps(eps)} of this dataset ({dataset_sha256.hex()[:16]}…), and "
                        f"{_fmt_eps(spent)} of its lifetime budget {budget:g} is already "
                        f"granted" + (f" to: {spent_by}" if spent_by else "")
                    )
            db.execute(
                "INSERT INTO ledger VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(dataset_sha256, policy_digest, shard_id) DO UPDATE SET "
                "status = excluded.status, updated_ms = excluded.updated_ms",
                (
                    dataset_sha256,
                    digest,
                    policy.name,
                    party_id,
                    shard_id,
                    eps,
                    float(policy.privacy["delta"]) if eps is not None else None,
                    status,
                    _now_ms(),
                    plaintext_sha256,
                ),
            )
            if label is not None:
                db.execute("INSERT OR IGNORE INTO datasets VALUES (?, ?)", (dataset_sha256, label))
        return not existed

    # A grant is one row, named by its dataset, policy and shard id; the calls below name it
    # by what a receipt or deletion receipt says (policy, party, shard id and the file's
    # commitment), so that they never touch another file's grant under the same shard id
    # (another run of the policy, a re-export).

    def shard_dataset(
        self, policy_digest: bytes, party_id: str, shard_id: str, plaintext_sha256: bytes
    ) -> bytes | None:
        row = self._db.execute(
            "SELECT dataset_sha256 FROM ledger WHERE policy_digest = ? AND party_id = ? "
            "AND shard_id = ? AND plaintext_sha256 = ?",
            (policy_digest, party_id, shard_id, plaintext_sha256),
        ).fetchone()
        return None if row is None else bytes(row[0])

    def set_status(
        self,
        policy_digest: bytes,
        party_id: str,
        shard_id: str,
        plaintext_sha256: bytes,
        status: str,
    ) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE ledger SET status = ?, updated_ms = ? WHERE policy_digest = ? "
                "AND party_id = ? AND shard_id = ? AND plaintext_sha256 = ?",
                (status, _now_ms(), policy_digest, party_id, shard_id, plaintext_sha256),
            )

    def forget_grant(
        self, policy_digest: bytes, party_id: str, shard_id: str, plaintext_sha256: bytes
    ) -> None:
        """An upload the enclave refused spent nothing: drop the reservation it made."""
        with self._transaction() as db:
            db.execute(
                "DELETE FROM ledger WHERE policy_digest = ? AND party_id = ? AND shard_id = ? "
                "AND plaintext_sha256 = ? AND status = 'uploaded'",
                (policy_digest, party_id, shard_id, plaintext_sha256),
            )


def ledger_summary(memory: PartyMemory) -> list[dict[str, Any]]:
    """Every dataset with a grant or a budget: its budget, ε granted in total (None when a
    policy without DP holds it) and per policy, JSON-ready (``cctrain ledger``)."""
    budgets = {d: (eps, label) for d, eps, label in memory.budgets()}
    by_dataset: dict[bytes, list[Grant]] = {}
    for g in memory.grants():
        by_dataset.setdefault(g.dataset_sha256, []).append(g)
    out = []
    for dataset in sorted(set(by_dataset) | set(budgets)):
        grants = by_dataset.get(dataset, [])
        total = memory.granted(dataset)
        budget, label = budgets.get(dataset, (memory.lifetime_budget(dataset), ""))
        label = memory.label(dataset) or label
        out.append(
            {
                "dataset_sha256": dataset.hex(),
                "label": label,
                "budget": budget,
                "granted": None if math.isinf(total) else total,
                "policies": [
                    {
                        "policy_name": g.policy_name,
                        "policy_digest": g.policy_digest.hex(),
                        "shard_id": g.shard_id,
                        "epsilon": g.epsilon,
                        "status": g.status,
                    }
                    for g in grants
                ],
            }
        )
    return out
