"""One writer per study file: a second writer is refused with one line naming the first
(pid, host, command), and a SIGKILLed writer leaves no stale lock."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import pytest
from click.testing import CliRunner

from mdsens.cli import main
from mdsens.studies import StudyInUse, WriterLock, lock_owner, read, scan
from mdsens.studies._file import lock_path

ROOT = Path(__file__).resolve().parents[1]
STRUCTURE = str(ROOT / "data" / "ar_fcc_32.extxyz")
# fixed cell, energy only: the fcc start is already a minimum, so each point is cheap
ARGS = ["scan", STRUCTURE, "-p", "lj", "--param", "sigma=3.4", "--param", "epsilon=0.0104",
        "--sweep", "epsilon=0.01,0.011", "--wrt", "epsilon", "--observable", "energy", "-q"]

_HOLDER = textwrap.dedent("""
    import sys, time
    from mdsens.studies import WriterLock
    WriterLock(sys.argv[1], command="holder --sleeps").acquire()
    print("locked", flush=True)
    time.sleep(300)
""")


@contextlib.contextmanager
def _holder(path: Path):
    """A subprocess that takes the writer lock of ``path`` and sleeps."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", _HOLDER, str(path)], env=env,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "locked"
        yield child
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
        child.stdout.close()


def _one_error_line(res) -> str:
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and lines[0].startswith("Error:"), \
        (res.exit_code, res.output)
    return lines[0]


def test_second_writer_refused_until_the_first_is_killed(tmp_path):
    out = tmp_path / "same.h5"
    res = CliRunner().invoke(main, [*ARGS, "-o", str(out)])
    assert res.exit_code == 0, res.output
    with h5py.File(out, "r+") as f:  # as a killed run leaves it: point 1 to do
        f["done"][1] = False
    fresh = tmp_path / "fresh.h5"
    with _holder(out) as child, _holder(fresh) as child2:
        owner = lock_owner(out)
        assert owner.pid == child.pid and owner.host == socket.gethostname()
        assert owner.command == "holder --sleeps"
        for extra in (["--resume"], ["--overwrite"]):
            line = _one_error_line(CliRunner().invoke(main, [*ARGS, "-o", str(out), *extra]))
            assert f"pid {child.pid} on host {socket.gethostname()}" in line, line
            assert "holder --sleeps" in line and "being written" in line, line
        assert not read(out).done[1]  # nothing computed, nothing written
        with pytest.raises(StudyInUse, match=f"pid {child.pid} ") as info:
            scan(STRUCTURE, _pot(), {"epsilon": [0.01, 0.011]}, ["epsilon"], ["energy"], out,
                 resume=True)
        assert info.value.owner.pid == child.pid
        with pytest.raises(StudyInUse, match=f"pid {child2.pid} "):  # a new file too
            scan(STRUCTURE, _pot(), {"epsilon": [0.01]}, ["epsilon"], ["energy"], fresh)
        assert not fresh.exists()
        child.send_signal(signal.SIGKILL)
        child.wait()
        # the killed writer's lock file stays, but the kernel released its lock
        assert lock_path(out).exists() and lock_owner(out) is None
        res = CliRunner().invoke(main, [*ARGS, "-o", str(out), "--resume"])
        assert res.exit_code == 0, res.output
    assert read(out).complete and read(out).converged.all()
    assert not lock_path(out).exists()


def _pot():
    from mdsens.md.potentials import get

    return get("lj", sigma=3.4, epsilon=0.0104)


def test_scan_holds_the_lock_while_it_writes(tmp_path):
    out = tmp_path / "held.h5"
    lock_path(out).write_text("left by a crash, not JSON")  # a stale file is no lock
    seen = []

    def progress(n_done, n_points, p, converged):
        seen.append(lock_owner(out))
        with pytest.raises(StudyInUse):  # a second writer, even in this process
            WriterLock(out).acquire()

    r = scan(STRUCTURE, _pot(), {"epsilon": [0.01]}, ["epsilon"], ["energy"], out,
             progress=progress, command_line="mdsens scan --test")
    assert r.complete
    assert len(seen) == 1 and seen[0].pid == os.getpid()
    assert seen[0].command == "mdsens scan --test"
    assert lock_owner(out) is None and not lock_path(out).exists()


def test_lock_is_released_on_error(tmp_path):
    out = tmp_path / "x.h5"
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        scan(STRUCTURE, _pot(), {"epsilon": [0.01]}, ["epsilon"], ["energy"], out,
             resume=True)
    assert not lock_path(out).exists()
    with WriterLock(out, command="me"):
        assert lock_owner(out).command == "me"
    assert lock_owner(out) is None
