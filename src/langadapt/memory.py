"""Where memory and disk go: peak resident memory and bytes written while a stage runs, and handing freed
memory back to the operating system between stages.

A stage's peak is exact when the stage raised the process's peak (``VmHWM``); otherwise it is the highest
resident size a sampling thread saw (every ``SAMPLE_S``), which can miss a spike shorter than that. The
kernel's own peak is never reset, so ``/usr/bin/time -v`` and ``getrusage`` still report the whole run's.
Off Linux the figures that need ``/proc`` are None.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import re
import resource
import threading

SAMPLE_S = 0.02
_MB = 2**20


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            m = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M)
    except OSError:
        return None
    return int(m.group(1)) if m else None


def rss_mb() -> float | None:
    """This process's resident memory now, in MiB."""
    kb = _status_kb("VmRSS")
    return kb / 1024 if kb is not None else None


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB."""
    kb = _status_kb("VmHWM")
    return (kb if kb is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024


def written_bytes() -> int | None:
    """Bytes this process (with the children it has waited for) sent to the storage layer so far."""
    try:
        with open("/proc/self/io", encoding="ascii") as f:
            m = re.search(r"^write_bytes: (\d+)", f.read(), re.M)
    except OSError:
        return None
    return int(m.group(1)) if m else None


_libc = None


def release() -> None:
    """Collect garbage and return free heap pages to the OS (glibc's ``malloc_trim``): what one stage
    freed is not held as resident memory while the next one runs."""
    global _libc
    gc.collect()
    if _libc is None:
        name = ctypes.util.find_library("c")
        try:
            _libc = ctypes.CDLL(name) if name else False
        except OSError:
            _libc = False
    if _libc and hasattr(_libc, "malloc_trim"):
        _libc.malloc_trim(0)


class StageUsage:
    """Peak resident memory and bytes written between ``start()`` and ``stop()``."""

    def __init__(self, interval: float = SAMPLE_S):
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sampled = 0.0

    def start(self) -> StageUsage:
        release()
        self._peak0 = peak_rss_mb()
        self._written0 = written_bytes()
        self._children0 = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        self._sampled = rss_mb() or 0.0
        self._thread = threading.Thread(target=self._sample, name="langadapt-memory", daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            now = rss_mb()
            if now is not None and now > self._sampled:
                self._sampled = now

    def stop(self) -> dict:
        """``{"peak_rss_mb", "written_mb"}`` (and ``workers_peak_rss_mb`` when child processes that ended
        during the stage reached a new peak); written_mb is None where the OS does not say."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        peak = peak_rss_mb()
        if peak <= self._peak0:  # the stage stayed under an earlier stage's peak: the sampled one
            peak = max(self._sampled, rss_mb() or 0.0)
        written = written_bytes()
        out = {"peak_rss_mb": round(peak, 1),
               "written_mb": round((written - self._written0) / _MB, 1) if None not in (written, self._written0) else None}
        children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        if children > self._children0:
            out["workers_peak_rss_mb"] = round(children / 1024, 1)
        return out


def describe(usage: dict) -> str:
    """``peak memory 1,234 MB resident, 56 MB written`` for the log."""
    text = f"peak memory {usage['peak_rss_mb']:,.0f} MB resident"
    if usage.get("workers_peak_rss_mb"):
        text += f" (worker processes {usage['workers_peak_rss_mb']:,.0f} MB)"
    if usage.get("written_mb") is not None:
        text += f", {usage['written_mb']:,.0f} MB written"
    return text
