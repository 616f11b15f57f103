"""The sandbox cloud's core: instances, their lifecycle and their simulated machines.

Dialect modules (``inventory/providers/<provider>/sandbox.py``) turn requests into calls on :class:`Cloud` and
records into the provider's JSON. Instance state is *computed from timestamps*: an instance is
``pending`` for the first half of the boot delay, ``booting`` for the second half and ``running``
afterwards, until it is powered off or destroyed. A small reconciler thread (and every read, so
there is no race) "activates" an instance when it reaches ``running``: opens its SSH endpoint and
runs its startup script once per boot. Persisted state (SQLite) survives a restart; in-memory state
(open listeners) is rebuilt from it.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import uuid
from pathlib import Path

from . import catalog
from .faults import Faults
from .node import Node
from .ssh import SessionSpec, SSHManager
from .state import Store

log = logging.getLogger("sandbox.cloud")

PENDING, BOOTING, RUNNING, STOPPED = "pending", "booting", "running", "stopped"
VAST_FIRST_INSTANCE_ID = 31_300_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cloud:
    def __init__(
        self, state_file: Path, *, seed: int = 42, boot_delay: float = 3.0, faults: Faults | None = None
    ):
        self.state_dir = state_file.resolve().parent
        self.seed = seed
        self.boot_delay = boot_delay
        self.faults = faults or Faults()
        self.lock = threading.RLock()
        self.store = Store(state_file)
        self.admin_url_file = self.state_dir / "admin_url"
        self.instances_dir = self.state_dir / "instances"
        self.vast_offers = catalog.generate_vast_offers(seed)
        self.vast_offer_by_id = {o["id"]: o for o in self.vast_offers}
        self.td_locations = catalog.generate_td_locations(seed)
        self.td_location_by_id = {loc["id"]: loc for loc in self.td_locations}
        self.instances: dict[str, dict] = self.store.load_instances()
        self.nodes: dict[str, Node] = {k: self._node(r) for k, r in self.instances.items()}
        self.active: set[str] = set()
        self.blackholes: dict[str, socket.socket] = {}  # direct_blocked: listeners that never answer
        self.session_pids: dict[str, set[int]] = {}
        self.calls: dict[str, int] = {}
        # Vast account credit in USD (users/current; set with PUT /_sandbox/balance). Plenty by
        # default so tests that do not look at balances never meet it.
        self.vast_credit: float = 100_000.0
        self.ssh = SSHManager(
            self.state_dir / "ssh_host_ed25519_key", self._authorize, self._session_spec, self._track_pid
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._reconcile_loop, name="sandbox-reconcile", daemon=True)

    def start(self, admin_url: str) -> None:
        self.admin_url_file.write_text(admin_url + "\n")
        self.reconcile()
        self._thread.start()

    def stop(self) -> None:
        """Stop serving. Instance processes keep running: the machines don't die with the API."""
        self._stop.set()
        self._thread.join(timeout=5)
        self.ssh.stop()
        self.store.close()

    def _node(self, record: dict) -> Node:
        return Node(self.instances_dir, record, self.admin_url_file)

    # -- state machine ---------------------------------------------------------------------
    def phase(self, rec: dict, now: float | None = None) -> str:
        """pending / booting / running / stopped, from the record's timestamps; activates the
        instance on the way (so a caller never sees "running" before SSH listens)."""
        if rec.get("powered_off"):
            return STOPPED
        if rec.get("listing_only"):
            return RUNNING  # nothing to boot or activate: it exists only in listings
        now = time.time() if now is None else now
        elapsed = now - rec["boot_at"]
        if rec.get("never_runs"):  # stuck_loading / oci_fail faults: the boot never ends
            return BOOTING if elapsed >= rec["boot_delay"] / 2 else PENDING
        if elapsed >= rec["boot_delay"]:
            key = self.key(rec)
            if key not in self.active:
                with self.lock:
                    self._activate(key, rec)
            return RUNNING if key in self.active else BOOTING
        return BOOTING if elapsed >= rec["boot_delay"] / 2 else PENDING

    def boot_progress(self, rec: dict) -> int:
        """0..100 through the boot, for status messages."""
        if rec["boot_delay"] <= 0:
            return 100
        return max(0, min(100, int(100 * (time.time() - rec["boot_at"]) / rec["boot_delay"])))

    @staticmethod
    def key(rec: dict) -> str:
        return f"{rec['dialect']}/{rec['id']}"

    def reconcile(self) -> None:
        with self.lock:
            for key, rec in list(self.instances.items()):
                if rec.get("listing_only"):
                    continue
                self.nodes[key].reap()
                if self.phase(rec) != RUNNING and key in self.active:
                    self._deactivate(key)
                self._maybe_die(rec)

    def _reconcile_loop(self) -> None:
        while not self._stop.wait(0.1):
            try:
                self.reconcile()
            except Exception:  # keep the reconciler alive whatever happens
                log.exception("reconcile failed")

    def _activate(self, key: str, rec: dict) -> None:
        """Open the SSH endpoint and run the boot script once for this boot."""
        if key in self.active or key not in self.instances:
            return
        node = self.nodes[key]
        try:
            node.prepare()
            try:
                self.ssh.open(key, rec["ssh_port"])
            except OSError:
                # The persisted port was taken by someone else while we were down.
                rec["ssh_port"] = free_port()
                self.save(rec)
                self.ssh.open(key, rec["ssh_port"])
            self.active.add(key)
            startup = rec.get("startup")
            if startup and rec.get("started_seq", 0) < rec["boot_seq"]:
                pgid = node.run_startup(startup["script"], shell=startup["shell"])
                rec.setdefault("pgids", []).append(pgid)
            rec["started_seq"] = rec["boot_seq"]
            self.save(rec)
        except Exception:
            log.exception("activating %s failed; will retry", key)

    def _maybe_die(self, rec: dict) -> None:
        """The ``die_after_s`` node fault: a machine that ran that long stops by itself, once
        (TD-STOPS: TensorDock ``Stopped``; VA-DIES: Vast ``exited``), and stays listed."""
        die_after = (rec.get("node") or {}).get("die_after_s")
        if die_after is None or rec.get("died") or rec["powered_off"]:
            return
        if time.time() >= rec["boot_at"] + rec["boot_delay"] + float(die_after):
            rec["died"] = True
            self.save(rec)
            self.power_off(rec["dialect"], rec["id"], reason="died")

    def blackhole_port(self, rec: dict) -> int:
        """A port that accepts TCP (the kernel's backlog) and never says a word, as a direct Vast
        port that drops packets looks to an SSH client: it waits until its own timeout
        (FIELD_NOTES VA-SSH, the ``direct_blocked`` node fault)."""
        key = self.key(rec)
        with self.lock:
            sock = self.blackholes.get(key)
            if sock is None:
                sock = socket.socket()
                sock.bind(("127.0.0.1", 0))
                sock.listen(64)
                self.blackholes[key] = sock
            return sock.getsockname()[1]

    def _deactivate(self, key: str) -> None:
        sock = self.blackholes.pop(key, None)
        if sock is not None:
            sock.close()
        self.active.discard(key)
        try:
            self.ssh.close(key)
        except Exception:
            log.exception("closing ssh of %s", key)

    # -- records ---------------------------------------------------------------------------
    def save(self, rec: dict) -> None:
        self.store.save_instance(self.key(rec), rec)

    def new_record(self, dialect: str, instance_id: str, **fields) -> dict:
        """Create, persist and prepare a new instance; ``fields`` are dialect specifics."""
        now = time.time()
        rec = {
            "dialect": dialect,
            "id": instance_id,
            "uid": uuid.uuid4().hex,
            "created_at": now,
            "boot_at": now,
            "boot_delay": self.boot_delay,
            "boot_seq": 1,
            "started_seq": 0,
            "powered_off": False,
            "stop_reason": None,
            "stopped_at": None,
            "ssh_port": free_port(),
            "pgids": [],
            "destroy_attempts": 0,
            **fields,
        }
        # Node faults (faults.NODE_KEYS), drawn once per machine.
        rec["node"] = self.faults.node(dialect, str((fields.get("gpu") or {}).get("name", "")))
        key = self.key(rec)
        with self.lock:
            self.instances[key] = rec
            self.nodes[key] = node = self._node(rec)
            node.prepare()
            self.save(rec)
        return rec

    def add_listing_only(self, dialect: str, records: list[dict]) -> list[dict]:
        """Add instances that exist only in the provider's listings (for benchmarks of large
        listings): always running, no SSH listener, no machine directory, no start-up script, and
        their offer stays on the menu. ``records`` hold ``id`` and the dialect's fields; they are
        persisted in one transaction and destroyed like any other instance."""
        now = time.time()
        added = []
        for fields in records:
            rec = {
                "dialect": dialect,
                "uid": uuid.uuid4().hex,
                "created_at": now,
                "boot_at": now,
                "boot_delay": 0.0,
                "boot_seq": 1,
                "started_seq": 1,
                "powered_off": False,
                "stop_reason": None,
                "stopped_at": None,
                "ssh_port": 0,
                "pgids": [],
                "destroy_attempts": 0,
                "users": [],
                "startup": None,
                "listing_only": True,
                **fields,
            }
            added.append(rec)
        with self.lock:
            for rec in added:
                key = self.key(rec)
                self.instances[key] = rec
                self.nodes[key] = self._node(rec)  # never prepared: no files on disk
            self.store.save_instances([(self.key(rec), rec) for rec in added])
        return added

    def get(self, dialect: str, instance_id: str) -> dict | None:
        return self.instances.get(f"{dialect}/{instance_id}")

    def records(self, dialect: str | None = None) -> list[dict]:
        with self.lock:
            return [r for r in self.instances.values() if dialect is None or r["dialect"] == dialect]

    def listable(self, dialect: str) -> list[dict]:
        """Records a LIST call may show: the ``listing_lag_s`` fault hides young instances."""
        lag = self.faults.listing_lag(dialect)
        now = time.time()
        return [r for r in self.records(dialect) if now - r["created_at"] >= lag]

    def destroy(self, dialect: str, instance_id: str, *, force: bool = False) -> str:
        """ "ok", "not_found" or "failed" (the destroy_fail_times fault)."""
        key = f"{dialect}/{instance_id}"
        with self.lock:
            rec = self.instances.get(key)
            if rec is None:
                return "not_found"
            if not force and rec["destroy_attempts"] < self.faults.destroy_fail_times(dialect):
                rec["destroy_attempts"] += 1
                self.save(rec)
                return "failed"
            del self.instances[key]
            self.store.delete_instance(key)
            node = self.nodes.pop(key)
            self._deactivate(key)
            pgids = rec.get("pgids", []) + sorted(self.session_pids.pop(key, set()))
        if rec.get("listing_only"):
            return "ok"  # no processes and no files to clean up
        threading.Thread(target=self._teardown, args=(node, pgids, True), daemon=True).start()
        return "ok"

    def power_off(self, dialect: str, instance_id: str, reason: str = "poweroff") -> bool:
        """The machine stops: SSH closes, its processes die, the provider still lists it."""
        key = f"{dialect}/{instance_id}"
        with self.lock:
            rec = self.instances.get(key)
            if rec is None:
                return False
            if not rec["powered_off"]:
                rec.update(powered_off=True, stop_reason=reason, stopped_at=time.time())
                self.save(rec)
            self._deactivate(key)
            node = self.nodes[key]
            pgids = rec.get("pgids", []) + sorted(self.session_pids.pop(key, set()))
            rec["pgids"] = []
            self.save(rec)
        # Delayed a little: the caller may be the instance's own `shutdown`, waiting for our answer.
        threading.Timer(0.2, self._teardown, args=(node, pgids, False)).start()
        return True

    def power_on(self, dialect: str, instance_id: str) -> bool:
        """Start a stopped instance again: a new boot (delay, then startup script again)."""
        with self.lock:
            rec = self.get(dialect, instance_id)
            if rec is None:
                return False
            if rec["powered_off"]:
                rec.update(powered_off=False, stop_reason=None, stopped_at=None, boot_at=time.time())
                rec["boot_seq"] += 1
                self.save(rec)
            return True

    def reset(self) -> int:
        """Destroy every instance of both dialects (no faults); returns how many there were."""
        with self.lock:
            keys = list(self.instances)
        for key in keys:
            dialect, instance_id = key.split("/", 1)
            self.destroy(dialect, instance_id, force=True)
        return len(keys)

    @staticmethod
    def _teardown(node: Node, pgids: list[int], remove: bool) -> None:
        try:
            node.kill_all(pgids)
            if remove:
                node.remove_files()
        except Exception:
            log.exception("teardown of %s", node.key)

    # -- offers in use ---------------------------------------------------------------------
    def vast_rented(self, shown_for: float = 0.0) -> set[int]:
        """Asks in use; ``shown_for`` > 0 leaves out those rented less than that many seconds ago
        (they still show in search: the search_stale_s fault)."""
        cutoff = time.time() - shown_for
        return {
            int(r["offer_id"])
            for r in self.records("vastai")
            if not r.get("listing_only") and (not shown_for or r["created_at"] <= cutoff)
        }

    def td_used(self) -> dict[tuple[str, str], int]:
        used: dict[tuple[str, str], int] = {}
        for r in self.records("tensordock"):
            for v0, count in r["td"]["gpus"].items():
                k = (r["td"]["location_id"], v0)
                used[k] = used.get(k, 0) + count
        return used

    # -- SSH callbacks (called on the SSH thread: no cloud lock, dict reads only) -----------
    def _authorize(self, key: str, username: str, blob: bytes) -> bool:
        rec, node = self.instances.get(key), self.nodes.get(key)
        if rec is None or node is None or key not in self.active or username not in rec["users"]:
            return False
        # key_delay_s node fault: keys land late (VA-SSH 10-15 s, TD-SSHKEY-LATE 60-90 s); until then
        # the port answers and refuses every key, as sshd does.
        key_delay = float((rec.get("node") or {}).get("key_delay_s") or 0)
        if time.time() < rec["boot_at"] + rec["boot_delay"] + key_delay:
            return False
        return blob in node.authorized_blobs(username)

    def _session_spec(self, key: str, username: str, term: str | None) -> SessionSpec | None:
        rec, node = self.instances.get(key), self.nodes.get(key)
        if rec is None or node is None or key not in self.active:
            return None
        home = node.home(username)
        home.mkdir(parents=True, exist_ok=True)
        return SessionSpec(
            env=node.env(username, term), cwd=str(home), rewrite=node.rewrite, fs_root=str(node.fs)
        )

    def _track_pid(self, key: str, pid: int) -> None:
        self.session_pids.setdefault(key, set()).add(pid)

    # -- admin -----------------------------------------------------------------------------
    def admin_view(self, rec: dict) -> dict:
        phase = self.phase(rec)
        key = self.key(rec)
        return {
            "dialect": rec["dialect"],
            "id": rec["id"],
            "label": rec.get("label"),
            "phase": phase,
            "offer_id": rec["offer_id"],
            "created_at": rec["created_at"],
            "ssh_port": rec["ssh_port"],
            "ssh_open": self.ssh.is_open(key),
            "destroy_attempts": rec["destroy_attempts"],
            "dir": str(self.nodes[key].dir) if key in self.nodes else None,
        }

    def count_call(self, dialect: str, op: str) -> None:
        with self.lock:
            name = f"{dialect}.{op}"
            self.calls[name] = self.calls.get(name, 0) + 1
