"""The simulated machine behind one sandbox instance.

Each instance gets a directory under the state dir::

    instances/<dialect>-<id>/
        bin/        nvidia-smi, shutdown, poweroff, halt, sudo, chown, whoami (first in PATH),
                    shopper-gpu-bench (the node agent's GPU benchmark here, see bench.py)
        fs/         the machine's "/" for well-known paths: fs/root, fs/home/user, fs/workspace
        gpu.json    what the fake nvidia-smi reports (edit util/mem_used to simulate load)
        startup.log output of the Vast onstart script / TensorDock cloud-init runcmd

The sandbox usually runs as root on a developer machine, so commands from the provider dialects
(``echo KEY >> /root/.ssh/authorized_keys``) must not touch the real ``/root``: startup scripts and
SSH exec commands have ``/root``, ``/home`` and ``/workspace`` rewritten into ``fs/`` (interactive
shells are not rewritten, but start in the fake home). SFTP/SCP is chrooted to ``fs/``, so
``scp x root@host:/root/x`` lands in the same place. ``authorized_keys`` files in the fake homes are
what the SSH endpoint accepts, exactly as sshd would.

Every process started for an instance carries ``SANDBOX_INSTANCE=<sandbox>/<dialect>/<id>`` in its
environment; destroy/power-off kills the process groups it knows of *and* any process whose
environment has that marker, so daemons that ``setsid`` away are found too.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from .bench import gpu_bench_script

BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_REWRITE_RE = re.compile(r"""(?<![\w.~/$-])(/root|/home|/workspace)(?=[/\s'";&|)`]|$)""")
_KEY_RE = re.compile(r"\b(ssh-ed25519|ssh-rsa|ssh-dss|ecdsa-sha2-nistp\d+|sk-[\w@.-]+)\s+([A-Za-z0-9+/]+=*)")

NVIDIA_SMI = r'''#!{python}
"""Fake nvidia-smi of the sandbox cloud: reads ../gpu.json."""
import json, sys, time
from pathlib import Path

st = json.loads((Path(__file__).resolve().parent.parent / "gpu.json").read_text())
# TD-NODRIVER: no working driver until the boot script repaired it (see NODETOOL).
if st.get("driver_state", "ok") != "ok" and not (st.get("repaired_at") and time.time() >= st["repaired_at"]):
    if st["driver_state"] == "absent":
        sys.stderr.write("nvidia-smi: command not found\n")
        sys.exit(127)
    print("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
          "Make sure that the latest NVIDIA driver is installed and running.")
    sys.exit(9)
n = st["count"]
util = (st.get("util") or [0] * n) + [0] * n
used = (st.get("mem_used") or [0] * n) + [0] * n
args = sys.argv[1:]


def field(i, f, units):
    total = st["mem_mib"]
    values = {{
        "index": (str(i), ""), "name": (st["name"], ""), "gpu_name": (st["name"], ""),
        "uuid": (st["uuids"][i], ""), "gpu_uuid": (st["uuids"][i], ""),
        "pci.bus_id": ("00000000:%02X:00.0" % (0x18 + i * 0x10), ""),
        "driver_version": (st["driver"], ""), "count": (str(n), ""),
        "utilization.gpu": (str(util[i]), " %"), "utilization.memory": (str(used[i] * 100 // total), " %"),
        "memory.total": (str(total), " MiB"), "memory.used": (str(used[i]), " MiB"),
        "memory.free": (str(total - used[i]), " MiB"), "temperature.gpu": (str(34 + util[i] // 3), ""),
        "power.draw": ("%.2f" % (60 + util[i] * 3), " W"), "power.limit": ("%.2f" % st["power"], " W"),
        "persistence_mode": ("Enabled", ""), "pstate": ("P0", ""),
    }}
    if f not in values:
        sys.stderr.write('Field "%s" is not a valid field to query.\n' % f)
        sys.exit(2)
    value, unit = values[f]
    return value + (unit if units else "")


query = next((a.split("=", 1)[1] for a in args if a.startswith("--query-gpu=")), None)
fmt = next((a.split("=", 1)[1] for a in args if a.startswith("--format=")), "")
if query is not None:
    fields = [f.strip() for f in query.split(",") if f.strip()]
    opts = fmt.split(",")
    if "noheader" not in opts:
        units = {{"utilization.gpu": " [%]", "utilization.memory": " [%]", "memory.total": " [MiB]",
                 "memory.used": " [MiB]", "memory.free": " [MiB]", "power.draw": " [W]",
                 "power.limit": " [W]"}}
        print(", ".join(f + ("" if "nounits" in opts else units.get(f, "")) for f in fields))
    for i in range(n):
        print(", ".join(field(i, f, "nounits" not in opts) for f in fields))
    sys.exit(0)
if "-L" in args or "--list-gpus" in args:
    for i in range(n):
        print("GPU %d: %s (UUID: %s)" % (i, st["name"], st["uuids"][i]))
    sys.exit(0)

W = 91
print(time.strftime("%a %b %d %H:%M:%S %Y") + "       ")
print("+" + "-" * (W - 2) + "+")
head = "| NVIDIA-SMI %-21s Driver Version: %-14s CUDA Version: %-9s" % (
    st["driver"], st["driver"], st["cuda"])
print(head.ljust(W - 1) + "|")
print("|-----------------------------------------+------------------------+----------------------+")
print("| GPU  Name                 Persistence-M | Bus-Id          Disp.A | Volatile Uncorr. ECC |")
print("| Fan  Temp   Perf          Pwr:Usage/Cap |           Memory-Usage | GPU-Util  Compute M. |")
print("|                                         |                        |               MIG M. |")
print("|=========================================+========================+======================|")
for i in range(n):
    name = st["name"][:28]
    bus = "00000000:%02X:00.0" % (0x18 + i * 0x10)
    print("| %3d  %-28s   On  | %-18s Off | %20s |" % (i, name, bus, "0"))
    mem = "%dMiB / %dMiB" % (used[i], st["mem_mib"])
    pwr = "%dW / %dW" % (60 + util[i] * 3, st["power"])
    temp, pct = 34 + util[i] // 3, "%d%%" % util[i]
    print("| N/A   %2dC    P0   %21s | %22s | %7s      Default |" % (temp, pwr, mem, pct))
    print("|                                         |                        |             Disabled |")
    print("+-----------------------------------------+------------------------+----------------------+")
print(" " * W)
print("+" + "-" * (W - 2) + "+")
print("| Processes:".ljust(W - 1) + "|")
print("|  GPU   GI   CI              PID   Type   Process name                        GPU Memory |")
print("|        ID   ID                                                               Usage      |")
print("|" + "=" * (W - 2) + "|")
print("|  No running processes found".ljust(W - 1) + "|")
print("+" + "-" * (W - 2) + "+")
'''

# apt-get, apt, dpkg, dkms, modprobe, systemctl, fuser and lsmod of every sandbox machine: nothing
# is installed for real (the sandbox may run as root on a developer's machine); they play
# TensorDock's driver repair (FIELD_NOTES TD-NODRIVER) and dpkg lock (TD-DPKGLOCK) on ../gpu.json.
NODETOOL = r'''#!{python}
"""Package and driver tools of the sandbox cloud; state in ../gpu.json."""
import fcntl, json, os, re, sys, time
from pathlib import Path

GPU = Path(__file__).resolve().parent.parent / "gpu.json"
tool = os.path.basename(sys.argv[0])
args = sys.argv[1:]
LOCK = "E: Could not get lock /var/lib/dpkg/lock-frontend. It is held by process 1234 (unattended-upgr)"


def load():
    return json.loads(GPU.read_text())


def save(st):
    tmp = GPU.with_suffix(".tmp")
    tmp.write_text(json.dumps(st, indent=1))
    os.replace(tmp, GPU)


def held(st):
    return not st.get("unattended_stopped") and time.time() < st.get("dpkg_lock_until", 0)


def broken(st):
    repaired = st.get("repaired_at") and time.time() >= st["repaired_at"]
    return st.get("driver_state", "ok") != "ok" and not repaired


def fail(message, code):
    sys.stderr.write(message + "\n")
    sys.exit(code)


if tool in ("apt-get", "apt", "dpkg"):
    # -o DPkg::Lock::Timeout=N waits for the lock, as apt does.
    found = [re.search(r"Lock::Timeout=(\d+)", a, re.I) for a in args]
    wait = max([int(m.group(1)) for m in found if m] or [0])
    deadline = time.time() + wait
    while held(load()) and time.time() < deadline:
        time.sleep(0.5)

with open(str(GPU) + ".lock", "w") as lockf:
    fcntl.flock(lockf, fcntl.LOCK_EX)
    st = load()
    steps = st.setdefault("repair", [])
    if tool == "systemctl":
        stop = any(a in ("stop", "disable", "kill", "mask") for a in args)
        if stop and any("unattended" in a for a in args):
            st["unattended_stopped"] = True
            save(st)
    elif tool == "fuser":
        if any("dpkg/lock" in a for a in args) and held(st):
            print(" 1234")
            sys.exit(0)
        sys.exit(1)
    elif tool == "lsmod":
        print("Module                  Size  Used by")
        if not broken(st):
            print("nvidia              56823808  0")
    elif tool == "dpkg":
        if "-l" in args or "--list" in args:
            if st.get("driver_state") == "absent" and broken(st):
                fail("dpkg-query: no packages found matching nvidia*", 1)
            flag, version = ("iU", "550.127.05-0ubuntu1") if broken(st) else ("ii", st["driver"])
            major = version.split(".")[0]
            print("%s  nvidia-dkms-%s  %s  amd64  NVIDIA DKMS package" % (flag, major, version))
        elif any(a.startswith("--configure") for a in args):
            if held(st):
                fail("dpkg: error: dpkg frontend lock was locked by another process with pid 1234", 2)
            steps.append("configure")
            save(st)
    elif tool in ("apt-get", "apt"):
        if held(st):
            fail(LOCK, 100)
        if "install" in args and any(a.startswith("nvidia-driver") for a in args):
            if st.get("driver_state") == "broken" and "configure" not in steps:
                fail("E: dpkg was interrupted, you must manually run 'dpkg --configure -a' "
                     "to correct the problem.", 100)
            steps.append("install")
            save(st)
    elif tool == "dkms":
        if st.get("driver_state") == "absent":
            fail("dkms: command not found", 127)
        if ("install" in args or "autoinstall" in args) and st.get("driver_state") == "broken":
            if "configure" not in steps:
                fail("Error! Bad return status for module build on kernel: 6.8.0-generic (x86_64)", 10)
            steps.append("install")
            save(st)
    elif tool == "modprobe":
        if "nvidia" in args and broken(st):
            if "install" not in steps:
                fail("modprobe: FATAL: Module nvidia not found in directory /lib/modules/6.8.0-generic", 1)
            if st.get("repair_fails"):
                fail("modprobe: ERROR: could not insert 'nvidia': No such device", 1)
            if not st.get("repaired_at"):
                # The live manual repair ended on this driver (FIELD_NOTES TD-NODRIVER).
                repaired_at = time.time() + float(st.get("repair_s") or 0)
                st.update(repaired_at=repaired_at, driver="580.126.09", cuda="13.0")
                save(st)
sys.exit(0)
'''

POWEROFF = r'''#!{python}
"""shutdown/poweroff/halt of the sandbox cloud: asks the sandbox to power this instance off."""
import sys, urllib.request
from pathlib import Path

if "-c" in sys.argv[1:]:  # "shutdown -c": cancel; nothing is ever pending here
    sys.exit(0)
base = Path({admin_url_file!r}).read_text().strip()
req = urllib.request.Request(base + "/_sandbox/instances/{dialect}/{id}/poweroff", method="POST", data=b"")
urllib.request.urlopen(req, timeout=10).read()
print("Powering off.")
'''

SUDO = """#!/bin/sh
# sudo of the sandbox cloud: everyone is root already; drop sudo's own options.
while [ $# -gt 0 ]; do
  case "$1" in
    -u|-g|-C|-D|-h|-p|-r|-t|-U) shift 2 ;;
    --) shift; break ;;
    -*) shift ;;
    *) break ;;
  esac
done
exec "$@"
"""

WHOAMI = """#!/bin/sh
echo "${USER:-root}"
"""

# The "user"/"root" accounts of the fake machine do not exist on the real host; chown must not fail.
CHOWN = """#!/bin/sh
/bin/chown "$@" 2>/dev/null || true
"""


def key_blobs(text: str) -> set[bytes]:
    """The raw public-key blobs in an authorized_keys text (options and comments ignored)."""
    import base64
    import binascii

    blobs = set()
    for m in _KEY_RE.finditer(text):
        try:
            blobs.add(base64.b64decode(m.group(2)))
        except (binascii.Error, ValueError):
            continue
    return blobs


def instance_marker(instances_dir: Path, dialect: str, instance_id: object) -> str:
    """The SANDBOX_INSTANCE value of every process started for one instance of one sandbox."""
    sandbox = hashlib.sha1(str(Path(instances_dir).resolve()).encode()).hexdigest()[:10]
    return f"{sandbox}/{dialect}/{instance_id}"


class Node:
    """Directories, scripts, environment and processes of one instance."""

    def __init__(self, base_dir: Path, record: dict, admin_url_file: Path):
        self.record = record
        self.key = f"{record['dialect']}/{record['id']}"
        # Unique per sandbox (its instances dir): two sandboxes on one machine (parallel tests)
        # number their instances alike and must never kill each other's processes.
        self.marker = instance_marker(base_dir, record["dialect"], record["id"])
        self.dir = base_dir / f"{record['dialect']}-{record['id']}"
        self.bin = self.dir / "bin"
        self.fs = self.dir / "fs"
        self.admin_url_file = admin_url_file
        self._procs: list[subprocess.Popen] = []
        self._lock = threading.Lock()

    # -- filesystem ------------------------------------------------------------------------
    def home(self, user: str) -> Path:
        return self.fs / "root" if user == "root" else self.fs / "home" / user

    def prepare(self) -> None:
        """Create the directories and (re)write the scripts; idempotent, run at every boot."""
        for user in self.record["users"]:
            (self.home(user) / ".ssh").mkdir(parents=True, exist_ok=True)
            (self.home(user) / ".ssh" / "authorized_keys").touch(mode=0o600, exist_ok=True)
        (self.fs / "workspace").mkdir(parents=True, exist_ok=True)
        self.bin.mkdir(parents=True, exist_ok=True)
        gpu = self.record["gpu"]
        gpu_file = self.dir / "gpu.json"
        if not gpu_file.exists():  # keep edits (simulated load) across reboots
            uuids = [
                f"GPU-{self.record['uid'][:8]}-{i:04x}-4000-8000-{self.record['uid'][-12:]}"
                for i in range(gpu["count"])
            ]
            gpu_file.write_text(json.dumps(self._gpu_state(gpu, uuids), indent=1))
        py = sys.executable
        scripts = {
            "nvidia-smi": NVIDIA_SMI.format(python=py),
            "sudo": SUDO,
            "chown": CHOWN,
            "whoami": WHOAMI,
            "shopper-gpu-bench": gpu_bench_script(py),
        }
        poweroff = POWEROFF.format(
            python=py,
            admin_url_file=str(self.admin_url_file),
            dialect=self.record["dialect"],
            id=self.record["id"],
        )
        for name in ("shutdown", "poweroff", "halt"):
            scripts[name] = poweroff
        for name in ("apt-get", "apt", "dpkg", "dkms", "modprobe", "systemctl", "fuser", "lsmod"):
            scripts[name] = NODETOOL.format(python=py)
        for name, text in scripts.items():
            path = self.bin / name
            path.write_text(text)
            path.chmod(0o755)

    def _gpu_state(self, gpu: dict, uuids: list[str]) -> dict:
        """gpu.json of a new machine, with its node faults (faults.NODE_KEYS)."""
        node = self.record.get("node") or {}
        state = {**gpu, "uuids": uuids, "util": [], "mem_used": []}
        lie = node.get("cuda_lie")
        if lie:  # VA-CUDA-LIE: the offer said more than the host has
            state.update(cuda=lie.get("actual_cuda", "12.8"), driver=lie.get("actual_driver", "570.124.04"))
        fault = node.get("node_fault")
        state["driver_state"] = {"no_driver": "broken", "absent": "absent"}.get(fault, "ok")
        state["repair_s"] = float(node.get("repair_s") or 0)
        state["repair_fails"] = bool(node.get("repair_fails"))
        lock_s = float(node.get("dpkg_lock_s") or 0)
        running_at = self.record.get("boot_at", time.time()) + self.record.get("boot_delay", 0)
        state["dpkg_lock_until"] = running_at + lock_s if lock_s else 0
        return state

    def add_authorized_key(self, user: str, public_key: str) -> None:
        path = self.home(user) / ".ssh" / "authorized_keys"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(public_key.strip() + "\n")
        path.chmod(0o600)

    def authorized_blobs(self, user: str) -> set[bytes]:
        path = self.home(user) / ".ssh" / "authorized_keys"
        try:
            return key_blobs(path.read_text(errors="replace"))
        except OSError:
            return set()

    def rewrite(self, command: str) -> str:
        """Map the machine's well-known absolute paths into ``fs/`` (see the module docstring)."""
        return _REWRITE_RE.sub(lambda m: str(self.fs) + m.group(1), command)

    # -- environment -----------------------------------------------------------------------
    def env(self, user: str = "root", term: str | None = None) -> dict[str, str]:
        home = self.home(user)
        env = {
            "PATH": f"{self.bin}:{BASE_PATH}",
            "HOME": str(home),
            "USER": user,
            "LOGNAME": user,
            "SHELL": "/bin/bash" if Path("/bin/bash").exists() else "/bin/sh",
            "LANG": "C.UTF-8",
            "SANDBOX_INSTANCE": self.marker,
            "SANDBOX_FS_ROOT": str(self.fs),
            "SANDBOX_PYTHON": sys.executable,
            # No GPU here: the node agent's benchmark runs the fake one (bench.py), not PyTorch.
            "SHOPPER_AGENT_BENCH_CMD": str(self.bin / "shopper-gpu-bench"),
        }
        if term:
            env["TERM"] = term
        env.update({str(k): str(v) for k, v in self.record.get("env", {}).items()})
        return env

    # -- processes -------------------------------------------------------------------------
    def run_startup(self, script: str, *, shell: str) -> int:
        """Start the boot script (Vast onstart / TensorDock runcmd) detached, in its own session,
        logging to startup.log; returns its pid (= process group id)."""
        path = self.dir / "startup.sh"
        path.write_text(self.rewrite(script))
        log = (self.dir / "startup.log").open("ab")
        log.write(f"--- boot at {time.strftime('%Y-%m-%dT%H:%M:%S')}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            [shell, str(path)],
            cwd=str(self.home("root")),
            env=self.env("root"),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        with self._lock:
            self._procs.append(proc)
        return proc.pid

    def reap(self) -> None:
        """Collect exited children so they do not linger as zombies."""
        with self._lock:
            self._procs = [p for p in self._procs if p.poll() is None]

    def kill_all(self, pgids: list[int], grace: float = 1.0) -> None:
        """SIGTERM the known process groups and every marked process, SIGKILL what is left."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = self._marked_pids()
            if sig == signal.SIGKILL and not pids:
                break
            for pgid in pgids:
                # Only kill a group that is still ours (pgids survive restarts; pids get reused).
                if self._is_marked(pgid):
                    with contextlib.suppress(OSError):
                        os.killpg(pgid, sig)
            for pid in pids:
                with contextlib.suppress(OSError):
                    os.kill(pid, sig)
            if sig == signal.SIGTERM:
                deadline = time.monotonic() + grace
                while time.monotonic() < deadline and self._marked_pids():
                    self.reap()
                    time.sleep(0.05)
        self.reap()

    def _is_marked(self, pid: int) -> bool:
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            return False
        return f"\0SANDBOX_INSTANCE={self.marker}\0".encode() in b"\0" + environ + b"\0"

    def _marked_pids(self) -> list[int]:
        me = os.getpid()
        pids = []
        for name in os.listdir("/proc"):
            if name.isdigit() and int(name) != me and self._is_marked(int(name)):
                # Zombies have an empty environ; a live marked process is what we are after.
                pids.append(int(name))
        return pids

    def remove_files(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def shell_join(entry: object) -> str:
    """A cloud-init runcmd entry: a string is a shell line, a list is an argv."""
    if isinstance(entry, list):
        return shlex.join(str(x) for x in entry)
    return str(entry)
