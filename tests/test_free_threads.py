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
