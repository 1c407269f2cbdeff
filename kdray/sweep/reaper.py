"""Local Ray dies with its driver: a watchdog ends the processes a killed ``kdray sweep`` left running.

Ray ties its GCS and raylet to the driver, but the raylet's agents (``ray::DashboardAgent``,
``ray::RuntimeEnvAgent``) outlive a SIGKILLed driver by about a minute, waiting on a GCS that is gone
(issue 19.6). The watchdog is a small process of its own session: every half second it notes the driver's
descendants (pid and start time, from ``/proc``) in ``<sweep>/.ray_processes.json``; when the driver is
gone it ends those still running (SIGTERM, then SIGKILL) and removes the file. If the watchdog itself was
killed, the next run of the sweep ends what the file lists (:func:`reap_leftovers`).

A process the driver's tree started after the watchdog's last look (a Ray worker spawned as the driver
died) is found two more ways: as a descendant of a recorded process, and by the ``KDRAY_SWEEP_DRIVER``
variable every process of the driver's tree inherits (``/proc/<pid>/environ``; reparenting to init does
not change it). Only processes that descended from a kdray driver are ever signalled, and only while their
start time still matches the one recorded, so a reused pid is never hit. Linux only (``/proc``); elsewhere it does
nothing. Run as a script (``python reaper.py DRIVER_PID PIDFILE``) so it starts without importing the sweep.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PIDFILE = ".ray_processes.json"
MARKER = "KDRAY_SWEEP_DRIVER"  # "<pid>:<start time>" of the driver, inherited by everything it starts
REAP_ROUNDS = 5  # after the driver ends: reap, look again for what the reaped processes had started, ...
POLL_SECONDS = 0.5
TERM_GRACE_SECONDS = 3.0


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (state first), or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()  # the command name may hold spaces and parentheses


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of ``pid`` from /proc, or None when it is gone."""
    fields = _stat_fields(pid)
    return None if fields is None else (int(fields[1]), int(fields[19]))


def _proc_table() -> dict[int, tuple[int, int]]:
    table = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            found = _stat(int(entry.name))
            if found is not None:
                table[int(entry.name)] = found
    return table


def descendants(root: int) -> dict[int, int]:
    """pid -> start time of every live descendant of ``root``."""
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    out: dict[int, int] = {}
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        if pid not in out and pid in table:
            out[pid] = table[pid][1]
            todo.extend(children.get(pid, []))
    return out


def alive(pid: int, start: int) -> bool:
    """Whether ``pid`` is still the process that started at ``start`` (not a reused pid) and not a zombie."""
    fields = _stat_fields(pid)  # one read: a zombie has ended, only its parent's wait is missing
    return fields is not None and int(fields[19]) == start and fields[0] != "Z"


def marker_of(pid: int, start: int) -> str:
    """The value of ``MARKER`` in the environment of a driver's tree."""
    return f"{pid}:{start}"


def marked(marker: str) -> dict[int, int]:
    """pid -> start time of every live process whose environment carries ``MARKER=marker``."""
    needle = f"{MARKER}={marker}".encode()
    out: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            env = Path(f"/proc/{entry.name}/environ").read_bytes()
        except OSError:  # gone, or another user's process
            continue
        if needle in env.split(b"\0"):
            found = _stat(int(entry.name))
            if found is not None:
                out[int(entry.name)] = found[1]
    return out


def reap_tree(processes: dict[int, int], marker: str) -> list[int]:
    """Reap ``processes``, what they started and every process carrying ``marker``, until none is left."""
    hit: list[int] = []
    for _ in range(REAP_ROUNDS):
        live = {pid: start for pid, start in processes.items() if alive(pid, start)}
        for pid in list(live):
            live.update(descendants(pid))
        live.update(marked(marker))
        live.pop(os.getpid(), None)
        if not live:
            break
        hit += [pid for pid in reap(live) if pid not in hit]
        processes = live
    return hit


def reap(processes: dict[int, int]) -> list[int]:
    """SIGTERM the listed processes that still run, SIGKILL those left after a grace period; returns the pids hit."""
    hit = [pid for pid, start in processes.items() if alive(pid, start) and pid != os.getpid()]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in hit:
            if alive(pid, processes[pid]):
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass
        deadline = time.monotonic() + TERM_GRACE_SECONDS
        while sig == signal.SIGTERM and time.monotonic() < deadline and any(alive(p, processes[p]) for p in hit):
            time.sleep(0.1)
    return hit


def start_time(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot), or None when it is gone: a pid plus this names one process."""
    found = _stat(pid)
    return None if found is None else found[1]


def write_state(pidfile: Path, state: dict[str, Any]) -> None:
    """The watchdog's file: ``{"driver": [pid, start], "processes": {pid: start}}``."""
    from kdray.io import atomic_write_json

    atomic_write_json(pidfile, state, fsync=False)


def watch(driver: int, pidfile: Path) -> None:
    """Follow ``driver``'s descendants until it ends, then end the ones still running."""
    driver_stat = _stat(driver)
    if driver_stat is None:
        return
    driver_start = driver_stat[1]
    known: dict[int, int] = {}
    while alive(driver, driver_start):
        current = descendants(driver)
        current.pop(os.getpid(), None)
        if any(known.get(pid) != start for pid, start in current.items()):
            known = {pid: start for pid, start in {**known, **current}.items() if alive(pid, start)}
            write_state(pidfile, {"driver": [driver, driver_start], "processes": known})
        time.sleep(POLL_SECONDS)
    reap_tree(known, marker_of(driver, driver_start))
    pidfile.unlink(missing_ok=True)


def reap_leftovers(pidfile: str | Path) -> list[int]:
    """End what a dead driver's watchdog did not (it was killed too); a live driver's file is left alone."""
    pidfile = Path(pidfile)
    try:
        state = json.loads(pidfile.read_text())
        driver, driver_start = state["driver"]
        processes = {int(pid): int(start) for pid, start in state["processes"].items()}
    except (OSError, ValueError, KeyError, TypeError):
        return []
    if alive(int(driver), int(driver_start)):
        return []  # that sweep is still running; its lock keeps this run out anyway
    hit = reap_tree(processes, marker_of(int(driver), int(driver_start)))
    pidfile.unlink(missing_ok=True)
    return hit


def start_watchdog(pidfile: str | Path) -> subprocess.Popen | None:
    """Start the watchdog of this driver (None where /proc is missing)."""
    if not Path("/proc/self/stat").exists():
        return None
    os.environ[MARKER] = marker_of(os.getpid(), start_time(os.getpid()) or 0)  # before Ray starts: inherited
    package_root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), str(os.getpid()), str(pidfile)],
                            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)


def stop_watchdog(proc: subprocess.Popen | None, pidfile: str | Path) -> None:
    """After a clean shutdown: stop the watchdog without reaping (Ray already ended its processes)."""
    if proc is not None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
    Path(pidfile).unlink(missing_ok=True)


if __name__ == "__main__":  # pragma: no cover - the watchdog process
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    watch(int(sys.argv[1]), Path(sys.argv[2]))
