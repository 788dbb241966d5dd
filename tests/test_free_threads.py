"""The default thread count is the cores other processes leave free."""

from __future__ import annotations

import depthprune.threads as threads


def test_free_threads_subtracts_busy_cores(monkeypatch):
    monkeypatch.setattr(threads, "usable_cores", lambda: 4)
    monkeypatch.setattr(threads, "busy_cores", lambda sample_s=0.25: 1.2)
    assert threads.free_threads() == 3                   # round(4 - 1.2)
    monkeypatch.setattr(threads, "busy_cores", lambda sample_s=0.25: 3.9)
    assert threads.free_threads() == 1                   # never below one
    monkeypatch.setattr(threads, "busy_cores", lambda sample_s=0.25: None)
    assert threads.free_threads() == 4                   # unmeasurable: every usable core


def test_busy_cores_from_proc_stat(monkeypatch):
    samples = iter([(100, 1000), (100 + 150, 1000 + 200)])    # 150 of 200 jiffies busy
    monkeypatch.setattr(threads, "_cpu_times", lambda: next(samples))
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 2)
    assert threads.busy_cores(sample_s=0) == 1.5


def _run_cli_with_load(monkeypatch, busy: float, tmp_path, argv_extra=()):
    import torch

    from depthprune import cli

    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    monkeypatch.setattr(threads, "busy_cores", lambda sample_s=0.25: busy)
    before = torch.get_num_threads()
    try:
        # a verb that fails on its input after parsing: the thread choice happens before any verb's work
        code = cli.main(["report", str(tmp_path / "no-such-run"), "--output", str(tmp_path / "r"), *argv_extra])
        return code, torch.get_num_threads() if torch.get_num_threads() != before else "unchanged"
    finally:
        torch.set_num_threads(before)


def test_the_command_line_uses_the_cores_other_processes_leave_free(monkeypatch, tmp_path):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    import torch

    torch.set_num_threads(2)
    assert _run_cli_with_load(monkeypatch, 1.0, tmp_path) == (2, 1)      # one core busy elsewhere: one thread
    torch.set_num_threads(1)
    assert _run_cli_with_load(monkeypatch, 0.0, tmp_path) == (2, 2)      # idle: both


def test_threads_or_omp_num_threads_override_the_free_core_count(monkeypatch, tmp_path):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    import torch

    torch.set_num_threads(1)
    assert _run_cli_with_load(monkeypatch, 1.9, tmp_path, ["--threads", "2"]) == (2, 2)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert _run_cli_with_load(monkeypatch, 0.0, tmp_path) == (2, "unchanged")   # the user's environment wins
