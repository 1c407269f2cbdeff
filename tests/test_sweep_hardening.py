"""Issue 19.6, 19.8, 19.10, 19.11 and 17.1 without starting Ray: the watchdog that ends a killed driver's
processes (and only those), ERROR rows that keep seed and method, the attempts column, files that follow the
umask, one retry of a slow local Ray start, loopback-only init arguments, and job env vars that never clash."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import process_state
from kdray import results
from kdray.report import render
from kdray.sweep import reaper
from kdray.sweep.expansion import expand_grid
from kdray.sweep.ray_start import (
    JOB_CONFIG_VAR,
    LOCALHOST,
    RayStartError,
    driver_runtime_env,
    local_init_kwargs,
    start_local,
)
from kdray.sweep.recorder import trial_row
from kdray.sweep.run import load_sweep

REPO = Path(__file__).resolve().parents[1]
GOOD = (Path(__file__).resolve().parent / "spaces" / "good.yaml").read_text()


def _gone_within(pids: list[int], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not any(Path(f"/proc/{pid}").exists() and "Z" not in process_state(pid) for pid in pids):
            return True
        time.sleep(0.2)
    return False


# --------------------------------------------------------------------------- 19.6 the watchdog


DRIVER = """
import subprocess, sys, time
sys.path.insert(0, {repo!r})
from kdray.sweep import reaper
inner = "import subprocess, time; subprocess.Popen(['sleep', '300']); time.sleep(300)"
kids = [subprocess.Popen(['sleep', '300']), subprocess.Popen([sys.executable, '-c', inner])]
reaper.start_watchdog({pidfile!r})
print(' '.join(str(k.pid) for k in kids), flush=True)
time.sleep(300)
"""


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="the watchdog reads /proc")
def test_watchdog_ends_a_killed_drivers_processes(tmp_path: Path) -> None:
    pidfile = tmp_path / reaper.PIDFILE
    stranger = subprocess.Popen(["sleep", "300"])  # not the driver's: must survive
    driver = subprocess.Popen([sys.executable, "-c", DRIVER.format(repo=str(REPO), pidfile=str(pidfile))],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert driver.stdout is not None
        kids = [int(p) for p in driver.stdout.readline().split()]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the watchdog has seen the whole tree (grandchild included)
            listed = json.loads(pidfile.read_text())["processes"] if pidfile.exists() else {}
            if len(listed) >= 3 and all(str(k) in listed for k in kids):
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"the watchdog never listed the driver's processes: {pidfile.read_text()}")
        tree = [int(p) for p in listed]
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        assert _gone_within(tree, 10), [(p, process_state(p)) for p in tree]
        deadline = time.monotonic() + 5
        while pidfile.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not pidfile.exists()
        assert stranger.poll() is None  # only the driver's descendants were signalled
    finally:
        stranger.kill()
        driver.kill()


ORPHANING_DRIVER = """
import os, subprocess, sys, time
sys.path.insert(0, {repo!r})
from kdray.sweep import reaper
reaper.start_watchdog({pidfile!r})
# a grandchild whose parent exits at once: reparented to init before the watchdog could see it in the tree
orphan = subprocess.run(['sh', '-c', 'sleep 300 >/dev/null 2>&1 & echo $!'], check=True, capture_output=True, text=True)
print(orphan.stdout.strip(), flush=True)  # after its parent shell has exited
time.sleep(300)
"""


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="the watchdog reads /proc")
def test_watchdog_ends_an_orphan_of_the_drivers_tree_by_its_marker(tmp_path: Path) -> None:
    """A process the driver's tree started but that left the tree (its parent exited) is still ended: it
    carries the driver's marker in its environment; a process without it is not touched."""
    pidfile = tmp_path / reaper.PIDFILE
    stranger = subprocess.Popen(["sleep", "300"])
    driver = subprocess.Popen([sys.executable, "-c", ORPHANING_DRIVER.format(repo=str(REPO), pidfile=str(pidfile))],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert driver.stdout is not None
        orphan = int(driver.stdout.readline())
        assert reaper.start_time(orphan) is not None and orphan not in reaper.descendants(driver.pid)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(  # the watchdog has started
                b"reaper.py" in Path(f"/proc/{p}/cmdline").read_bytes() for p in reaper.descendants(driver.pid)):
            time.sleep(0.1)
        time.sleep(2 * reaper.POLL_SECONDS)  # and looked at its driver at least once
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        assert _gone_within([orphan], 10), process_state(orphan)
        assert stranger.poll() is None
    finally:
        stranger.kill()
        driver.kill()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="the watchdog reads /proc")
def test_leftovers_of_a_dead_driver_are_reaped_and_reused_pids_spared(tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    victim, bystander = subprocess.Popen(["sleep", "300"]), subprocess.Popen(["sleep", "300"])
    try:
        start = {p.pid: reaper.start_time(p.pid) for p in (victim, bystander)}
        pidfile = tmp_path / reaper.PIDFILE
        # the bystander is listed with another start time: a reused pid, which must not be hit
        pidfile.write_text(json.dumps({"driver": [dead.pid, 1], "processes": {
            str(victim.pid): start[victim.pid], str(bystander.pid): start[bystander.pid] + 1}}))
        assert reaper.reap_leftovers(pidfile) == [victim.pid]
        assert victim.wait(timeout=10) is not None and bystander.poll() is None and not pidfile.exists()
        # a live driver's file is left alone
        pidfile.write_text(json.dumps({"driver": [os.getpid(), reaper.start_time(os.getpid())],
                                       "processes": {str(bystander.pid): start[bystander.pid]}}))
        assert reaper.reap_leftovers(pidfile) == [] and bystander.poll() is None and pidfile.exists()
    finally:
        victim.kill()
        bystander.kill()


# --------------------------------------------------------------------------- 19.8 / 19.11 rows


def _sweep(tmp_path: Path, glue_dir: Path):
    path = tmp_path / "s.yaml"
    doc = yaml.safe_load(GOOD)
    doc["data"] = {"source": "local", "dir": str(glue_dir)}
    doc["selector"] = {"name": "actor_critic", "action": "hard", "phase_steps": 7}
    path.write_text(yaml.safe_dump(doc))
    sweep = load_sweep(str(path), None, None, None)
    return sweep, expand_grid(sweep, str(path))


def test_error_rows_keep_seed_and_method_and_the_report_names_them(tmp_path: Path, glue_dir: Path) -> None:
    sweep, trials = _sweep(tmp_path, glue_dir)
    ok = trials[0]
    bad = trials[1]
    good_row, _ = trial_row(sweep.name, ok.key, ok.task, ok.params, None, {"dev_score": 0.5}, None, "", "2024-01-01",
                            ok.run, attempts=1)
    error_row, traces = trial_row(sweep.name, bad.key, bad.task, bad.params, None, {},
                                  "FloatingPointError: non-finite train_loss", "", "2024-01-01", bad.run, attempts=3)
    assert traces == []
    assert (error_row["status"], error_row["seed"], error_row["method"]) == ("ERROR", bad.seed, "actor_critic_hard")
    assert (error_row["action"], error_row["phase_steps"], error_row["attempts"]) == ("hard", 7, 3)
    assert list(error_row["knowledge_pool"]) == ["finetune", "response"]
    results.append_trials(tmp_path / "out", [good_row, error_row])
    trials_df, _ = results.load(tmp_path / "out")
    assert list(trials_df["attempts"]) == [1, 3]
    assert trials_df.set_index("trial_id").loc[bad.key, "seed"] == bad.seed
    text = render(tmp_path / "out")
    assert "1 ERROR trial(s) excluded (AC-Hard/rte: 1)" in text and "nan/" not in text


def test_attempts_column_is_null_in_older_files(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    old = results.TRIAL_SCHEMA.remove(results.TRIAL_SCHEMA.get_field_index("attempts"))
    pq.write_table(pa.Table.from_pylist([{"trial_id": "a", "status": "TERMINATED", "dev_score": 0.5}], schema=old),
                   tmp_path / results.TRIALS_FILE)
    results.append_trials(tmp_path, [results.trial_row("s", "b", {"dev_score": 0.6}, attempts=2)])
    df, _ = results.load(tmp_path)
    assert df["attempts"].isna().tolist() == [True, False] and df["attempts"].iloc[1] == 2


# --------------------------------------------------------------------------- 19.10 umask


def test_result_files_follow_the_umask(tmp_path: Path) -> None:
    """Results, reports and the watchdog's file are created as open() would under the umask (022 here)."""
    code = f"""
import os, sys
os.umask(0o022)
sys.path.insert(0, {str(REPO)!r})
from kdray import results
from kdray.report import render
results.append_trials({str(tmp_path)!r}, [results.trial_row('s', 'a', {{'task': 'rte', 'dev_score': 0.5,
    'method': 'pkd', 'seed': 1}})])
results.append_traces({str(tmp_path)!r}, results.trace_rows('a', [{{'step': 1, 'phase': 0, 'knowledge': 'finetune',
    'weight': 1.0}}]))
render({str(tmp_path)!r}, out={str(tmp_path / 'report' / 'r.md')!r})
from kdray.sweep.reaper import write_state
write_state(__import__('pathlib').Path({str(tmp_path / reaper.PIDFILE)!r}), {{'driver': [1, 1], 'processes': {{}}}})
"""
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    for name in (results.TRIALS_FILE, results.TRACES_FILE, results.LOCK_FILE, "report/r.md", reaper.PIDFILE):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name
    assert (tmp_path / "report").stat().st_mode & 0o777 == 0o755


# --------------------------------------------------------------------------- Ray start-up (no Ray started)


def test_local_ray_binds_loopback_only(tmp_path: Path, glue_dir: Path) -> None:
    sweep, _ = _sweep(tmp_path, glue_dir)
    kwargs = local_init_kwargs(sweep)
    assert kwargs["_node_ip_address"] == LOCALHOST == kwargs["dashboard_host"] and kwargs["address"] == "local"
    assert kwargs["include_dashboard"] is False
    seen: list[str | None] = []
    before = os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
    start_local(sweep, init=lambda **kw: seen.append(os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")),
                shutdown=lambda: None)
    assert seen == ["0"] and os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") == before  # set while Ray starts


def test_startup_timeout_is_retried_once_then_one_line(tmp_path: Path, glue_dir: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    sweep, _ = _sweep(tmp_path, glue_dir)
    calls: list[str] = []

    def flaky(failures: int):
        def init(**kwargs: object) -> None:
            calls.append("init")
            if calls.count("init") <= failures:
                raise Exception("The current node timed out during startup. This could happen because ...")
        return init

    start_local(sweep, init=flaky(1), shutdown=lambda: calls.append("shutdown"))
    assert calls == ["init", "shutdown", "init"] and "retrying once" in capsys.readouterr().out
    calls.clear()
    with pytest.raises(RayStartError, match="timed out during startup twice.*--address auto") as info:
        start_local(sweep, init=flaky(2), shutdown=lambda: calls.append("shutdown"))
    assert calls == ["init", "shutdown", "init", "shutdown"] and "\n" not in str(info.value)
    with pytest.raises(ValueError, match="other"):  # any other start-up error is not retried
        start_local(sweep, init=lambda **kw: (_ for _ in ()).throw(ValueError("other")), shutdown=lambda: None)


def test_job_env_vars_are_not_set_twice() -> None:
    """Inside `ray job submit`, keys the job's runtime env sets are left to it (Ray refuses a second value)."""
    job = {"runtime_env": {"env_vars": {"TOKENIZERS_PARALLELISM": "false", "RAY_DEDUP_LOGS": "1"}}}
    environ = {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "KDRAY_CACHE_DIR": "/c", "PATH": "/bin",
               JOB_CONFIG_VAR: json.dumps(job)}
    assert driver_runtime_env(environ) == {"env_vars": {"HF_HUB_OFFLINE": "1", "KDRAY_CACHE_DIR": "/c"}}
    del environ[JOB_CONFIG_VAR]
    assert driver_runtime_env(environ)["env_vars"]["TOKENIZERS_PARALLELISM"] == "false"  # no job: set it here
    assert driver_runtime_env({"PATH": "/bin"}) == {}


def test_a_wrong_address_is_bounded_and_says_what_was_tried() -> None:
    import socket
    import time

    from kdray.sweep.ray_start import join

    with socket.socket() as s:  # a port nothing listens on: refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    called = []
    with pytest.raises(RayStartError, match=f"--address 127.0.0.1:{port}: nothing answered on 127.0.0.1:{port}"):
        join(f"127.0.0.1:{port}", init=lambda **kw: called.append(kw))
    t0 = time.perf_counter()  # an address that never answers (TEST-NET-1, RFC 5737): bounded by the probe
    with pytest.raises(RayStartError, match=r"ray://192.0.2.1:10001: nothing answered .* within 1 s.*default 10001"):
        join("ray://192.0.2.1:10001", init=lambda **kw: called.append(kw), probe_seconds=1.0)
    assert time.perf_counter() - t0 < 10 and not called  # ray.init never ran
    join("auto", init=lambda **kw: called.append(kw))  # `auto` is Ray's to resolve
    assert called and called[0]["address"] == "auto"


def test_tune_states_pickled_by_earlier_kdray_still_resolve() -> None:
    """tuner.pkl names the trial-folder function by its module; sweeps started before the Tuner code moved to
    kdray.sweep.tuner reference kdray.sweep.run._trial_dirname (a resume of one failed with AttributeError)."""
    import pickle

    from kdray.sweep.tuner import trial_dirname

    assert pickle.loads(b"ckdray.sweep.run\n_trial_dirname\n.") is trial_dirname
    assert pickle.loads(pickle.dumps(trial_dirname)) is trial_dirname
