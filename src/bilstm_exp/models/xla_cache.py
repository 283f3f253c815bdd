"""XLA's compiled programs kept across processes, safely: the second run of a shape loads, not compiles.

TensorFlow has a persistent compilation cache (``TF_XLA_FLAGS=--tf_xla_persistent_cache_directory=DIR``:
one file per compiled program), but used directly it fails the op, and with it the run, when an entry
is unreadable (a truncated file: "Read less bytes than requested") or the directory cannot be written,
and it loads whatever machine code the directory holds. So TensorFlow never sees the shared cache:

- the shared cache is private: ``$XDG_CACHE_HOME/bilstm-exp/xla`` (else ``~/.cache/...``, or
  ``BILSTM_EXP_XLA_CACHE``), mode 0700, refused if another user owns it or others may write it; one
  folder per TensorFlow version and CPU (a program compiled for other CPU features may not run);
- each process gets a folder of its own inside it, and TensorFlow's flag points there; before the
  first compile the shared programs whose checksum holds are hard-linked in (a truncated, garbage or
  half-written one is removed: TensorFlow compiles that program again). A link costs no copy, so a
  full cache costs a start the reading of its bytes once (to check them), not the writing of them;
- a shared program is TensorFlow's own file, named ``<program>.<sha256 of its bytes>.xla``. When the
  process ends, the programs it compiled are published: linked under a temporary name, then renamed
  (two writers of one program: two whole files, and the later one removes the earlier). TensorFlow
  writes its files under a temporary name and renames them too, so a linked file never changes;
- the shared cache holds at most ``MAX_BYTES`` (256 MiB): a process that publishes removes the oldest
  programs past it, by when they were published (a start links every program, so it cannot tell which
  ones it will use);
- anything that goes wrong on the way (no home, a full disk, a folder of someone else's) leaves the
  cache off for the process: it compiles as without one, and no op fails because of the cache.

``BILSTM_EXP_XLA_CACHE=off`` turns it off; a ``TF_XLA_FLAGS`` that names its own
``--tf_xla_persistent_cache_directory`` is left alone (the tests count compiled programs that way).
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import platform
import shutil
import socket
import stat
import tempfile
import time
from pathlib import Path

from bilstm_exp.processes import alive

ENV = "BILSTM_EXP_XLA_CACHE"  # a folder for the shared cache, or "off"
FLAG = "--tf_xla_persistent_cache_directory"
SUFFIX = ".xla"  # <program>.<sha256 hex of the file>.xla: TensorFlow's file, as it wrote it
EARLIER_SUFFIX = ".entry"  # the earlier format (a checksum header, then the file): removed on sight
MIN_FREE_BYTES = 1 << 30  # below this much free space the cache stays off (a failed write fails the op)
MAX_BYTES = 256 << 20  # the shared cache's size: past it, a publishing process removes the oldest programs
_state: dict[str, Path | None] = {}  # "local": this process's folder, set once enable() ran


def enable() -> Path | None:
    """Point TensorFlow's cache at this process's folder, filled from the shared cache; idempotent.
    Must run before any TF function does: a run calls it in ``training.runner.configure_tensorflow``,
    right after ``training.strategy`` (a multi-worker strategy must be the process's first TF work).
    Returns the folder, or None when the cache is off for this process."""
    if "local" not in _state:
        _state["local"] = None
        if os.environ.get(ENV, "").lower() != "off" and FLAG not in os.environ.get("TF_XLA_FLAGS", ""):
            try:
                _state["local"] = _start(shared_folder())
            except (OSError, RuntimeError, KeyError):  # e.g. no home folder: no cache, compiling works as without
                _state["local"] = None
    return _state["local"]


def shared_folder() -> Path:
    """The shared cache of this TensorFlow version on this CPU."""
    import tensorflow as tf  # here, not at the top: publishing and reading entries need no TensorFlow

    root = Path(os.environ.get(ENV) or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
                / "bilstm-exp" / "xla")
    machine = hashlib.sha256(f"{platform.machine()} {_cpu_flags()}".encode()).hexdigest()[:12]
    return root / f"tf{tf.__version__}-{machine}"


def _start(shared: Path) -> Path | None:
    _private_folder(shared)
    if shutil.disk_usage(shared).free < MIN_FREE_BYTES:
        return None
    _tidy(shared)
    local = Path(tempfile.mkdtemp(prefix=f"process-{socket.gethostname()}-{os.getpid()}-", dir=shared))
    fill(local, shared)
    imported = {p.name for p in local.iterdir()}
    _point_tensorflow_at(local)
    probe = {p.name for p in local.iterdir()} - imported
    if not probe:  # TensorFlow had read its flags already (a TF function ran before): no cache this time
        shutil.rmtree(local, ignore_errors=True)
        return None
    atexit.register(publish, local, shared, imported | probe)
    return local


def fill(local: Path, shared: Path) -> int:
    """Link into ``local`` each shared program whose checksum holds, as TensorFlow names it; remove the
    damaged ones. Returns how many were linked (benchmarks/xla_cache_start.py times it)."""
    linked = 0
    for entry in sorted(shared.glob(f"*{SUFFIX}"), key=_mtime, reverse=True):  # a program's newest first
        program = local / f"{program_of(entry)}.pb"
        if program.exists():
            continue
        payload = read_entry(entry)
        if payload is None:  # damaged for good (a whole file is renamed into place): compiled again
            with contextlib.suppress(OSError):
                entry.unlink()
            continue
        _link_or_copy(entry, program, payload)
        linked += 1
    return linked


def _point_tensorflow_at(local: Path) -> None:
    """TensorFlow reads its XLA flags once, when the first TF function runs: set the flag, run a program
    of this process's own (a random constant: compiled, so written to ``local``, which proves the flag
    took), then restore the variable, so child processes do not inherit this process's folder."""
    import tensorflow as tf

    previous = os.environ.get("TF_XLA_FLAGS")
    os.environ["TF_XLA_FLAGS"] = f"{previous or ''} {FLAG}={local}".strip()
    try:
        own = float(int.from_bytes(os.urandom(4), "little"))
        tf.function(lambda: tf.constant(own) + 1.0, jit_compile=True)()
    finally:
        if previous is None:
            del os.environ["TF_XLA_FLAGS"]
        else:
            os.environ["TF_XLA_FLAGS"] = previous


def publish(local: Path, shared: Path, imported: set[str] = frozenset()) -> int:
    """Publish the programs compiled into ``local`` (not those linked in) to ``shared``; remove ``local``.
    Returns how many were published; never raises."""
    published = 0
    try:
        for program in local.glob("*.pb"):
            if program.name not in imported:
                write_entry(shared, program.name[: -len(".pb")], program)
                published += 1
    except OSError:
        pass
    shutil.rmtree(local, ignore_errors=True)
    if published:
        evict(shared, MAX_BYTES)
    return published


def evict(shared: Path, max_bytes: int) -> list[Path]:
    """Remove the oldest programs (by when they were published) until the cache holds ``max_bytes`` or
    less: every process reads the whole cache when it starts, so its size is a cost of every run. A
    program removed while another process links it is skipped there (compiled again). Returns what was
    removed."""
    entries = []
    for entry in shared.glob(f"*{SUFFIX}"):
        with contextlib.suppress(OSError):
            info = entry.stat()
            entries.append((info.st_mtime, info.st_size, entry))
    total, removed = sum(size for _, size, _ in entries), []
    for _, size, entry in sorted(entries):
        if total <= max_bytes:
            break
        with contextlib.suppress(OSError):
            entry.unlink()
            removed.append(entry)
        total -= size
    return removed


def write_entry(shared: Path, program: str, source: Path) -> Path:
    """Publish ``source`` (a file nobody changes again) as ``program``: linked (else copied) under a
    temporary name in ``shared``, then renamed, so a reader sees a whole file or none; then the
    program's earlier files are removed. Returns the published path."""
    payload = source.read_bytes()
    path = shared / f"{program}.{hashlib.sha256(payload).hexdigest()}{SUFFIX}"
    temp = shared / f".{program}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    try:
        _link_or_copy(source, temp, payload)
        os.utime(temp)  # published now (a link keeps the time TensorFlow wrote the file): eviction's order
        os.replace(temp, path)
    finally:  # renaming a link onto another link of the same file leaves both: the temporary one goes
        temp.unlink(missing_ok=True)
    for earlier in shared.glob(f"{program}.*{SUFFIX}"):
        if earlier != path and program_of(earlier) == program:
            with contextlib.suppress(OSError):
                earlier.unlink()
    return path


def read_entry(path: Path) -> bytes | None:
    """The bytes of a whole program file, or None (unreadable, truncated, garbage, a name not ours)."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    digest = path.name[: -len(SUFFIX)].rpartition(".")[2]
    return data if path.name.endswith(SUFFIX) and hashlib.sha256(data).hexdigest() == digest else None


def program_of(path: Path) -> str:
    """The program a shared file holds: its name less the checksum and the suffix."""
    return path.name[: -len(SUFFIX)].rpartition(".")[0]


def _link_or_copy(source: Path, target: Path, payload: bytes) -> None:
    """A hard link: no bytes written (the shared cache and the process folders are on one file system);
    a copy where the file system has no hard links."""
    try:
        os.link(source, target)
    except OSError:
        target.write_bytes(payload)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _private_folder(folder: Path) -> None:
    """Create ``folder`` and the cache's root above it for this user only (0700); raise OSError when
    either is another user's or others may write to it (they could plant programs for it to run)."""
    for path in (folder.parent, folder):
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = path.stat()
        if info.st_uid != os.getuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise PermissionError(f"{path} is not private to this user")
        os.chmod(path, 0o700)


def _tidy(shared: Path) -> None:
    """Remove folders of processes of this host that ended without publishing (killed), temporary files
    of writers killed mid-write (a write takes milliseconds; an hour-old one is dead) and files of the
    earlier format: nothing to keep."""
    for earlier in shared.glob(f"*{EARLIER_SUFFIX}"):
        with contextlib.suppress(OSError):
            earlier.unlink()
    for temp in shared.glob(".*.tmp"):
        with contextlib.suppress(OSError):
            if time.time() - temp.stat().st_mtime > 3600:
                temp.unlink()
    prefix = f"process-{socket.gethostname()}-"
    for folder in shared.glob(f"{prefix}*"):
        pid = folder.name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and not alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _cpu_flags() -> str:
    """The CPU's feature flags (Linux), else the processor's name."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()
