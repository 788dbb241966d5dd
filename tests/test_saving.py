"""Outputs: atomic, with the permissions an ordinary write gives, and no temporary folder left for long."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from depthprune import DepthpruneError
from depthprune.saving import (TEMP_MARKER, atomic_output_dir, remove_stale_temp_dirs, write_bytes_atomic,
                               write_json_atomic)


@pytest.fixture
def umask():
    """Set a umask for the test and restore the previous one afterwards."""
    previous = os.umask(0o022)
    os.umask(previous)
    yield lambda mask: os.umask(mask)
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def ordinary_modes(folder: Path) -> tuple[int, int]:
    """The modes plain os.mkdir and open(..., 'w') give under the current umask: the independent expectation."""
    reference_dir = folder / "reference-dir"
    reference_dir.mkdir()
    reference_file = folder / "reference-file"
    reference_file.write_text("x")
    return mode(reference_dir), mode(reference_file)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_output_folder_and_json_get_the_umask_permissions(tmp_path, umask, mask):
    umask(mask)
    expected_dir, expected_file = ordinary_modes(tmp_path)
    with atomic_output_dir(tmp_path / "out") as tmp:
        write_json_atomic(tmp / "data.json", {"a": 1})
        write_bytes_atomic(tmp / "picture.png", b"\x89PNG")
    out = tmp_path / "out"
    assert mode(out) == expected_dir == 0o777 & ~mask
    assert mode(out / "data.json") == expected_file == 0o666 & ~mask
    assert mode(out / "picture.png") == expected_file
    assert sorted(p.name for p in out.iterdir()) == ["data.json", "picture.png"]   # no marker, no temp file left


def test_replacing_a_json_keeps_its_mode_as_an_ordinary_write_does(tmp_path, umask):
    umask(0o022)
    path = tmp_path / "run.json"
    path.write_text("{}")
    os.chmod(path, 0o640)
    write_json_atomic(path, {"b": 2})
    assert mode(path) == 0o640 and json.loads(path.read_text()) == {"b": 2}


def test_a_value_that_cannot_be_written_leaves_the_old_file_and_no_temp(tmp_path):
    path = tmp_path / "run.json"
    write_json_atomic(path, {"ok": True})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"ok": True}
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]


def test_a_saved_checkpoint_has_the_umask_permissions(tmp_path, umask, tiny_tokenizer):
    from depthprune.saving import save
    from tiny_models import tiny_model

    umask(0o002)
    expected_dir, expected_file = ordinary_modes(tmp_path)
    save(tiny_model("llama", 2), tiny_tokenizer, tmp_path / "ckpt", metadata={"method": "manual"})
    for path in [tmp_path / "ckpt", *(tmp_path / "ckpt").rglob("*")]:
        assert mode(path) == (expected_dir if path.is_dir() else expected_file), path


def test_a_failed_block_removes_the_temp_folder_and_keeps_the_old_output(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_output_dir(out, force=True) as tmp:
            (tmp / "new.txt").write_text("new")
            raise RuntimeError("boom")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert [p.name for p in out.iterdir()] == ["old.txt"]


def test_every_temp_folder_is_marked_with_its_owner(tmp_path):
    with atomic_output_dir(tmp_path / "out") as tmp:
        assert tmp.name.startswith(f".out.tmp-{os.getpid()}-")
        marker = json.loads((tmp / TEMP_MARKER).read_text())
        assert marker["pid"] == os.getpid() and marker["host"] == socket.gethostname()


def dead_pid() -> int:
    """The PID of a process that has exited (and been reaped), so no process runs under it now."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def make_temp(parent: Path, name: str, marker: dict | None) -> Path:
    folder = parent / name
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"half")
    if marker is not None:
        (folder / TEMP_MARKER).write_text(json.dumps(marker))
    return folder


def test_only_temp_folders_depthprune_left_behind_are_removed(tmp_path):
    pid, host = dead_pid(), socket.gethostname()
    stale = make_temp(tmp_path, f".out.tmp-{pid}-abcd", {"pid": pid, "host": host})
    unmarked = make_temp(tmp_path, f".out.tmp-{pid}-user", None)                       # no marker: not ours
    running = make_temp(tmp_path, f".out.tmp-{os.getpid()}-live", {"pid": os.getpid(), "host": host})
    elsewhere = make_temp(tmp_path, f".out.tmp-{pid}-host", {"pid": pid, "host": host + "-other"})
    renamed = make_temp(tmp_path, ".out.tmp-1-abcd", {"pid": pid, "host": host})       # name and marker disagree
    other_output = make_temp(tmp_path, f".outer.tmp-{pid}-abcd", {"pid": pid, "host": host})
    user_file = tmp_path / f".out.tmp-{pid}-file"
    user_file.write_text("mine")

    assert remove_stale_temp_dirs(tmp_path / "out") == [stale]
    assert not stale.exists()
    for kept in (unmarked, running, elsewhere, renamed, other_output, user_file):
        assert kept.exists(), kept

    # the next write of the same output removes it by itself
    again = make_temp(tmp_path, f".out.tmp-{pid}-efgh", {"pid": pid, "host": host})
    with atomic_output_dir(tmp_path / "out"):
        pass
    assert not again.exists() and (tmp_path / "out").is_dir()


def test_an_existing_output_is_refused_before_anything_is_written(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(DepthpruneError, match="already exists"):
        with atomic_output_dir(tmp_path / "out"):
            pytest.fail("the block must not run")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_ctrl_c_inside_a_commit_is_delivered_after_it(tmp_path):
    import signal

    from depthprune.saving import deferred_interrupts

    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("SIGINT is not handled as KeyboardInterrupt in this process")
    steps = []
    with pytest.raises(KeyboardInterrupt):
        with deferred_interrupts():
            os.kill(os.getpid(), signal.SIGINT)    # arrives in the middle ...
            for _ in range(1000):                  # ... (give the interpreter time to run handlers)
                pass
            steps.append("finished")               # ... but the block still completes
    assert steps == ["finished"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
