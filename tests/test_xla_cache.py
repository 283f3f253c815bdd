"""XLA's compiled programs kept across processes (bilstm_exp.models.xla_cache), and never a failed op.

Real TensorFlow in child processes training a tiny FastLSTM step with a cache folder of their own
(``BILSTM_EXP_XLA_CACHE``): a second process loads what the first compiled; entries damaged as a
killed writer leaves them (truncated, garbage, a stray temporary file) are removed, compiled again and
published whole; two writers of one program leave one whole file; a folder others may write is not used.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from bilstm_exp.models import xla_cache

TRAIN_STEP = """
import os
import numpy as np, keras, tensorflow as tf
from bilstm_exp.models import xla_cache
from bilstm_exp.models.fast_lstm import FastLSTM
local = xla_cache.enable()  # as a run does, before its first TF function
print("copied-in", -1 if local is None else len(list(local.iterdir())) - 1)  # less this process's probe
layer = keras.layers.Bidirectional(FastLSTM(4))
x = np.random.default_rng(0).random((8, 6, 3)).astype("float32")

@tf.function
def step(x):
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(x, training=True))  # as fit calls it (inference has a loop of its own)
    return tape.gradient(loss, layer.trainable_variables)

print("gradients", len(step(x)))
"""


def _train(cache: Path) -> int:
    """A child process's count of programs copied in from ``cache`` (-1: the cache was off); it trained."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", xla_cache.ENV: str(cache)}
    env.pop("TF_XLA_FLAGS", None)
    done = subprocess.run([sys.executable, "-c", TRAIN_STEP], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "gradients 6" in done.stdout
    return int(done.stdout.split("copied-in ")[1].split()[0])


def _entries(cache: Path) -> dict[str, bytes | None]:
    """Each shared program's bytes (None: damaged); a program held twice fails the test."""
    files = list(cache.glob(f"*/*{xla_cache.SUFFIX}"))
    programs = {xla_cache.program_of(p): xla_cache.read_entry(p) for p in files}
    assert len(programs) == len(files), files
    return programs


@pytest.mark.slow  # training subprocesses: `make test` runs it, not the inner loop
def test_a_second_process_loads_what_the_first_compiled_and_damaged_entries_are_rebuilt(tmp_path):
    cache = tmp_path / "xla"
    assert _train(cache) == 0
    published = _entries(cache)
    assert len(published) == 2 and None not in published.values()  # the forward and the backward loop
    folder = next(cache.iterdir())
    assert stat.S_IMODE(cache.stat().st_mode) == stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert _train(cache) == 2  # loaded, not compiled: nothing new published
    assert _entries(cache) == published
    linked = next(folder.glob(f"*{xla_cache.SUFFIX}"))
    assert linked.stat().st_nlink == 1  # the process's link to it went with its folder

    truncated, garbage = sorted(folder.glob(f"*{xla_cache.SUFFIX}"))  # as a writer killed mid-write leaves them
    truncated.write_bytes(truncated.read_bytes()[:200])
    garbage.write_bytes(b"\x00not an entry\xff" * 10)
    (folder / f".{truncated.name}.killed.tmp").write_bytes(b"half")
    assert _train(cache) == 0  # both removed: compiled again, no op failed
    rebuilt = _entries(cache)  # and published whole again (a compile's bytes vary: same programs, checked)
    assert rebuilt.keys() == published.keys() and None not in rebuilt.values()
    assert not list(folder.glob("process-*"))  # each process removed its own folder


WRITER = """
import sys
from pathlib import Path
from bilstm_exp.models.xla_cache import write_entry
folder, name = Path(sys.argv[1]), sys.argv[2]
compiled = folder / f"{name}.pb"  # as TensorFlow leaves a program in a process's folder
compiled.write_bytes(name.encode() * 50_000)
for _ in range(300):
    write_entry(folder / "shared", "program", compiled)
"""


@pytest.mark.slow  # subprocesses: `make test` runs it, not the inner loop
def test_two_writers_of_one_program_leave_whole_files_at_every_moment(tmp_path):
    """Two processes publish one program (different bytes, to tell them apart) while this one reads every
    file the shared folder lists: a file is whole, or gone (the other writer's replaced it), never a part."""
    shared = tmp_path / "shared"
    shared.mkdir()
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), name]) for name in "ab"]
    seen = set()
    while any(w.poll() is None for w in writers):
        for path in shared.glob(f"*{xla_cache.SUFFIX}"):
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                continue
            assert hashlib.sha256(data).hexdigest() == path.name.split(".")[-2]  # its checksum holds
            seen.add(data)
    assert [w.returncode for w in writers] == [0, 0]
    assert seen and seen <= {b"a" * 50_000, b"b" * 50_000}
    left = list(shared.iterdir())  # one whole file, no temporary one
    assert len(left) == 1 and xla_cache.program_of(left[0]) == "program" and xla_cache.read_entry(left[0])


@pytest.mark.slow  # training subprocesses: `make test` runs it, not the inner loop
@pytest.mark.parametrize("setting", ["others_may_write", "off"])
def test_a_cache_folder_others_may_write_is_not_used_and_training_goes_on(tmp_path, setting):
    """A folder others may write could hold programs planted for this process to run: the cache stays off."""
    cache = tmp_path / "xla"
    if setting == "others_may_write":
        cache.mkdir()
        cache.chmod(0o777)
    assert _train(Path("off") if setting == "off" else cache) == -1
    assert _entries(cache) == {}


def test_a_cache_past_its_size_loses_its_oldest_programs_when_a_process_publishes(tmp_path, monkeypatch):
    """Every process reads the whole shared cache in: publishing past ``max_bytes`` removes the oldest
    programs (by publish time), never the one just published; a cache within its size is left alone."""
    shared, local = tmp_path / "shared", tmp_path / "process"
    shared.mkdir()
    local.mkdir()
    for age, name in enumerate(["c", "b", "a"]):  # "a" the oldest
        compiled = tmp_path / f"{name}.pb"
        compiled.write_bytes(name.encode() * 1000)
        published = xla_cache.write_entry(shared, name, compiled)
        os.utime(published, (1_000_000 - age * 100, 1_000_000 - age * 100))
    assert xla_cache.evict(shared, max_bytes=3000) == []
    (local / "d.pb").write_bytes(b"d" * 1000)
    monkeypatch.setattr(xla_cache, "MAX_BYTES", 2000)  # the limit publish() evicts with
    assert xla_cache.publish(local, shared) == 1
    assert sorted(xla_cache.program_of(p) for p in shared.iterdir()) == ["c", "d"]
    assert xla_cache.read_entry(next(shared.glob(f"d.*{xla_cache.SUFFIX}"))) == b"d" * 1000
    assert not local.exists()


def test_a_file_system_without_hard_links_gets_copies_of_the_same_programs(tmp_path, monkeypatch):
    """Where ``os.link`` fails (a file system without hard links, a cache on another device), a process's
    folder gets copies: the same bytes under TensorFlow's names, and the shared files untouched."""
    shared, local = tmp_path / "shared", tmp_path / "process"
    shared.mkdir()
    local.mkdir()
    for name in ("a", "b"):
        compiled = tmp_path / f"{name}.pb"
        compiled.write_bytes(name.encode() * 1000)
        xla_cache.write_entry(shared, name, compiled)
        compiled.unlink()
    def no_hard_links(source, target):
        raise OSError(f"no hard links on this file system: {source} -> {target}")

    monkeypatch.setattr(os, "link", no_hard_links)
    assert xla_cache.fill(local, shared) == 2
    assert {p.name: p.read_bytes() for p in local.iterdir()} == {"a.pb": b"a" * 1000, "b.pb": b"b" * 1000}
    assert all(p.stat().st_nlink == 1 for p in [*local.iterdir(), *shared.iterdir()])  # copies, not links
