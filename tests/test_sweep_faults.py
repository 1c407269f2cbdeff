"""Faults on a real Ray (issue 19.6, 19.10, 19.11): local Ray on loopback only, a driver SIGKILLed twice (between
trials, and in the middle of a Parquet write) then resumed with nothing lost, duplicated, orphaned or left
behind, and a two-node cluster whose trial node dies mid-trial. Tiny-bert on 32 RTE rows keeps them cheap."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import free_ports, process_state
from kdray.results import load
from kdray.sweep import reaper

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")]
REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
RAY = str(Path(PY).parent / "ray")

# The driver as a subprocess; SLOW_WRITE makes every Parquet write of the results stop halfway (temp file
# written, not yet renamed) so the test can kill the driver exactly there.
DRIVER = """
import sys
if {slow_write}:
    import time
    import pyarrow.parquet as pq
    from kdray import io, results
    def stalled(path, table):
        def write(handle):
            pq.write_table(table, handle)
            handle.flush()
            time.sleep(600)
        return io.atomic_write(path, write)
    results.atomic_write_parquet = stalled
from kdray.cli import main
sys.exit(main(sys.argv[1:]))
"""


def space(tmp: Path, glue_dir: Path, name: str, search: dict, train: dict | None = None) -> Path:
    from test_sweep import space as base

    path = base(tmp, glue_dir, name, search, seeds=(1, 2))
    doc = yaml.safe_load(path.read_text())
    doc["train"].update(progress=False, **(train or {}))
    path.write_text(yaml.safe_dump(doc))
    return path


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), **extra}


def wait_for(predicate, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out after {seconds:.0f}s waiting for {what}")


def gone_within(processes: dict[int, int], seconds: float) -> list[int]:
    """The processes (pid -> start time) still running after ``seconds``; zombies count as ended."""
    deadline = time.monotonic() + seconds
    left = list(processes)
    while time.monotonic() < deadline:
        left = [p for p, start in processes.items() if reaper.alive(p, start) and process_state(p) != "Z"]
        if not left:
            break
        time.sleep(0.2)
    return left


def temps(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*.tmp"))


def _listening_addresses(pids: set[int]) -> set[str]:
    """Local addresses of the TCP sockets in LISTEN state that ``pids`` hold (from /proc/net/tcp{,6})."""
    inodes = set()
    for pid in pids:
        try:
            for fd in os.scandir(f"/proc/{pid}/fd"):
                target = os.readlink(fd.path)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            parts = line.split()
            if parts[3] == "0A" and parts[9] in inodes:
                raw = parts[1].split(":")[0]
                if width == 8:
                    found.add(socket.inet_ntop(socket.AF_INET, bytes.fromhex(raw)[::-1]))
                else:
                    words = b"".join(bytes.fromhex(raw[i:i + 8])[::-1] for i in range(0, 32, 8))
                    found.add(socket.inet_ntop(socket.AF_INET6, words))
    return found


def test_local_ray_listens_on_loopback_only(tmp_path: Path, glue_dir: Path) -> None:
    """The addresses Ray reports (node, GCS) and the sockets its processes listen on are all 127.0.0.1."""
    import ray

    from kdray.sweep.ray_start import start_local
    from kdray.sweep.run import load_sweep

    sweep = load_sweep(str(space(tmp_path, glue_dir, "lo", {"mode": "grid"})), None, None, None)
    start_local(sweep)
    try:
        nodes = ray.nodes()
        assert [n["NodeManagerAddress"] for n in nodes] == ["127.0.0.1"]
        assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")
        assert ray.util.get_node_ip_address() == "127.0.0.1"
        listening = _listening_addresses(set(reaper.descendants(os.getpid())) | {os.getpid()})
        assert listening and listening <= {"127.0.0.1", "::ffff:127.0.0.1"}, listening
    finally:
        ray.shutdown()


def test_killed_driver_twice_then_resume(tmp_path: Path, glue_dir: Path) -> None:
    """SIGKILL the driver alone (not its group) between trials, then in the middle of a Parquet write; a third
    run resumes. Every kill leaves no process of the driver's within 10 s; the resume leaves no temp file and
    exactly the four trials, the ones finished before the kills not run again."""
    path = space(tmp_path, glue_dir, "kill", {"mode": "grid", "space": {"selector.name": {"grid": ["finetune", "vanilla_kd"]}}})
    runs = tmp_path / "runs"
    sweep_dir = runs / "kill"
    argv = ["sweep", str(path), "--storage", str(runs), "--max-concurrent", "1"]

    def driver(slow_write: bool, resume: bool) -> subprocess.Popen:
        return subprocess.Popen([PY, "-c", DRIVER.format(slow_write=slow_write), *argv, *(["--resume"] if resume else [])],
                                env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)  # its own group: the test kills the driver pid alone

    def rows() -> int:
        try:
            return len(load(sweep_dir)[0])
        except (FileNotFoundError, OSError, ValueError):
            return 0

    def kill(proc: subprocess.Popen) -> None:
        tree = reaper.descendants(proc.pid)
        assert tree, "the driver started no processes"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        left = gone_within(tree, 10)
        assert left == [], [(p, Path(f"/proc/{p}/cmdline").read_bytes()[:80]) for p in left]

    first = driver(slow_write=False, resume=False)
    try:
        wait_for(lambda: rows() >= 1 and not temps(sweep_dir), 300, "the first trial's row")
        kill(first)  # between trials
    finally:
        first.kill()
    before = load(sweep_dir)[0].set_index("trial_id")["finished_at"]
    assert 1 <= len(before) < 4

    second = driver(slow_write=True, resume=True)
    try:
        # the sweep's own result files, at the top of its folder: a trial's traces.parquet (in trials/<id>/,
        # written by its worker, not stalled) has a temp file for a moment too, gone before the kill lands
        wait_for(lambda: any("/" not in n and ".parquet." in n for n in temps(sweep_dir)), 300,
                 "a Parquet write of the sweep's results in progress")
        kill(second)  # during a Parquet write: its temp file stays behind
    finally:
        second.kill()
    assert temps(sweep_dir)

    third = subprocess.run([PY, "-m", "kdray", *argv, "--resume"], env=env(), capture_output=True, text=True,
                           timeout=400)
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
    assert "cleaned up after a killed run" in third.stdout
    trials, traces = load(sweep_dir)
    assert len(trials) == 4 and trials["trial_id"].is_unique and (trials["status"] == "TERMINATED").all()
    kept = trials.set_index("trial_id").loc[list(before.index), "finished_at"]
    assert list(kept) == list(before)  # finished before the kills: not run again
    assert not traces.duplicated(["trial_id", "episode", "step", "knowledge"]).any()
    assert temps(sweep_dir) == [] and not (sweep_dir / reaper.PIDFILE).exists()


def _node(gcs_port: int | None, node_env: dict[str, str], cpus: int) -> subprocess.Popen:
    """``ray start --block`` of a head (gcs_port None: the GCS port is chosen) or a worker joining it."""
    agent, runtime_agent, metrics = free_ports(3)
    common = ["--block", "--node-ip-address", "127.0.0.1", "--num-cpus", str(cpus), "--disable-usage-stats",
              "--dashboard-agent-listen-port", str(agent), "--runtime-env-agent-port", str(runtime_agent),
              "--metrics-export-port", str(metrics)]
    role = ["--address", f"127.0.0.1:{gcs_port}"] if gcs_port else []
    return subprocess.Popen([RAY, "start", *role, *common], env=node_env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def _wait_for_cpus(gcs_port: int, node_env: dict[str, str], cpus: int, seconds: float) -> None:
    """Until ``ray status`` of the cluster counts ``cpus`` CPUs (its worker nodes have registered)."""
    def joined() -> bool:
        status = subprocess.run([RAY, "status", "--address", f"127.0.0.1:{gcs_port}"], env=node_env,
                                capture_output=True, text=True, timeout=60)
        return f"/{cpus}.0 CPU" in status.stdout
    wait_for(joined, seconds, f"{cpus} CPUs in the cluster")


def _raylet(node: subprocess.Popen) -> int:
    for pid in reaper.descendants(node.pid):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "raylet":
                return pid
        except OSError:
            continue
    raise AssertionError("no raylet under this node")


@pytest.mark.exclusive  # its GCS declares a node dead after 1.5 s without a health check: nothing may run beside it
def test_lost_node_trial_resumes_from_its_checkpoint(tmp_path: Path, glue_dir: Path) -> None:
    """A 127.0.0.1 head without CPUs and a worker node that holds the trial's CPU; the worker's raylet is killed
    after the trial's first checkpoint, a second worker joins, and the trial finishes there once, resumed from
    its checkpoint (its first report after the restart is past the first report of the lost attempt)."""
    path = space(tmp_path, glue_dir, "node", {"mode": "grid"},
                 train={"max_steps": 240, "eval_every": 20, "checkpoint_every": 20, "seeds": [1]})
    home = tmp_path / "home"
    home.mkdir()
    # its own HOME: no auth token of the user's; a short GCS health check so the lost node is noticed in seconds
    node_env = env(HOME=str(home), RAY_health_check_period_ms="500", RAY_health_check_failure_threshold="3",
                   RAY_health_check_timeout_ms="500", RAY_health_check_initial_delay_ms="500")
    node_env.pop("RAY_AUTH_MODE", None)
    (gcs,) = free_ports(1)
    head = subprocess.Popen([RAY, "start", "--head", "--port", str(gcs), "--block", "--node-ip-address", "127.0.0.1",
                             "--num-cpus", "0", "--include-dashboard", "false", "--disable-usage-stats",
                             "--dashboard-agent-listen-port", str(free_ports(1)[0]),
                             "--runtime-env-agent-port", str(free_ports(1)[0])],
                            env=node_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    nodes = [head]
    runs = tmp_path / "runs"
    try:
        time.sleep(5)
        nodes.append(_node(gcs, node_env, cpus=2))
        # the driver refuses a cluster without the trial's CPU: start it once the worker has joined (on a loaded
        # machine that took longer than the 5 s this test used to sleep)
        _wait_for_cpus(gcs, node_env, 2, 120)
        driver = subprocess.Popen([PY, "-m", "kdray", "sweep", str(path), "--address", f"127.0.0.1:{gcs}",
                                   "--storage", str(runs)], env=node_env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, start_new_session=True)
        tune_dir = runs / "node" / "tune"
        wait_for(lambda: driver.poll() is not None or any(tune_dir.glob("*/checkpoint_*")), 400,
                 "the trial's first checkpoint")
        assert driver.poll() is None, driver.communicate()[0][-4000:]  # it ended before the trial checkpointed
        os.kill(_raylet(nodes[1]), signal.SIGKILL)
        nodes.append(_node(gcs, node_env, cpus=2))
        out, _ = driver.communicate(timeout=400)
        assert driver.returncode == 0, out[-4000:]
    finally:
        for node in reversed(nodes):
            try:
                os.killpg(node.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for node in nodes:
            node.wait(timeout=60)
    trials, traces = load(runs / "node")
    assert len(trials) == 1 and trials["status"].iloc[0] == "TERMINATED" and trials["attempts"].iloc[0] == 2
    assert trials["train_steps"].iloc[0] == 240
    # the traces hold every phase once: the restart continued the run instead of repeating or losing phases
    final = traces[traces["episode"] == -1]
    assert not final.duplicated(["step", "knowledge"]).any()
    assert sorted(final["step"].unique()) == list(range(2, 241, 2))
    # Tune's own history (each report names the process that sent it): two attempts, and the second one's first
    # report comes after the lost attempt's first, so it went on from a checkpoint instead of from step 0
    history = [json.loads(line) for f in tune_dir.glob("*/result.json") for line in f.read_text().splitlines()]
    steps = [(h["pid"], h["step"]) for h in history if "step" in h and "pid" in h]
    first_step = {pid: step for pid, step in reversed(steps)}
    assert len(first_step) == 2, steps
    lost, retried = (first_step[pid] for pid in dict.fromkeys(pid for pid, _ in steps))
    assert retried > lost, steps
