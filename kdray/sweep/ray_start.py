"""Starting or joining Ray for a sweep: loopback-only local Ray, one retry of a slow start, job env vars merged.

- Local Ray (no ``--address``) binds its GCS, raylet, agents and workers to 127.0.0.1 (:func:`loopback_only`),
  so a laptop sweep is not reachable from the network (issue 19.10), and a watchdog (:mod:`kdray.sweep.reaper`)
  ends its processes if the driver is killed.
- On a loaded machine the local start can time out ("The current node timed out during startup"): it is
  retried once, then reported as one line that says what to do.
- Inside ``ray job submit`` the job's runtime env already sets env vars for every worker; Ray refuses a
  driver runtime env that sets one of the same keys (issue 17.1), so the driver passes only the others.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any, Callable, Iterator, Mapping

from kdray.config import SweepConfig
from kdray.sweep.resources import local_num_cpus, worker_env

LOCALHOST = "127.0.0.1"
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # see loopback_only
JOB_CONFIG_VAR = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray's job manager on a submitted job's driver
STARTUP_TIMEOUT = "timed out during startup"


class RayStartError(RuntimeError):
    """Ray could not be started or joined; the message says what to try."""


def job_env_vars(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The env vars of the runtime env a submitted job runs under (empty outside ``ray job submit``)."""
    text = (os.environ if environ is None else environ).get(JOB_CONFIG_VAR)
    if not text:
        return {}
    try:
        runtime_env = json.loads(text).get("runtime_env") or {}
    except (ValueError, AttributeError):
        return {}
    return dict(runtime_env.get("env_vars") or {})


def driver_runtime_env(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The runtime env kdray's ``ray.init`` passes: the driver's trial-relevant env vars, minus those the job's
    runtime env sets already (the job's value reaches the workers; setting the key twice is a Ray error)."""
    taken = job_env_vars(environ)
    env_vars = {k: v for k, v in worker_env(environ).items() if k not in taken}
    return {"env_vars": env_vars} if env_vars else {}


def local_init_kwargs(sweep: SweepConfig) -> dict[str, Any]:
    """``ray.init`` arguments of a local Ray: our own (never another one on this machine), loopback only."""
    return dict(address="local", _node_ip_address=LOCALHOST, num_cpus=local_num_cpus(sweep),
                num_gpus=0 if not sweep.resources.use_gpu else None, include_dashboard=False,
                dashboard_host=LOCALHOST, runtime_env=driver_runtime_env(), log_to_driver=True,
                configure_logging=True, logging_level="WARNING")


@contextlib.contextmanager
def loopback_only() -> Iterator[None]:
    """While Ray starts a local node: keep it on 127.0.0.1.

    Ray 2.60 replaces a node IP of 127.0.0.1 by the machine's routable address, and its gRPC servers then
    listen on every interface, unless it believes the node can never join a cluster: its flag for macOS and
    Windows, ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, read into ``ray_constants`` at import. With the flag off
    the node IP stays 127.0.0.1 and the GCS, raylet, agents and workers listen on it alone (the processes Ray
    spawns now inherit the variable). Both are restored afterwards, so a later ``--address`` join from this
    process resolves its address as usual.
    """
    from ray._private import ray_constants  # Ray's own switch; tests/test_sweep_faults.py checks the sockets

    saved_env, saved_flag = os.environ.get(LOOPBACK_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[LOOPBACK_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(LOOPBACK_ENV, None)
        else:
            os.environ[LOOPBACK_ENV] = saved_env


def start_local(sweep: SweepConfig, init: Callable[..., Any] | None = None,
                shutdown: Callable[[], None] | None = None) -> None:
    """Start a local Ray on 127.0.0.1; a start-up timeout is retried once, a second one is a
    :class:`RayStartError`."""
    import ray

    init, shutdown = init or ray.init, shutdown or ray.shutdown
    for attempt in (1, 2):
        try:
            with loopback_only():
                init(**local_init_kwargs(sweep))
            return
        except Exception as err:  # Ray raises a bare Exception for the start-up timeout
            if STARTUP_TIMEOUT not in str(err):
                raise
            shutdown()  # end what the failed start left running before trying again
            if attempt == 2:
                raise RayStartError(
                    "local Ray timed out during startup twice (the machine is too loaded to start the GCS and "
                    "raylet in 30 s); retry when it is quieter, or start Ray yourself (`ray start --head "
                    "--node-ip-address 127.0.0.1`) and pass --address auto") from None
            print("[kdray] local Ray timed out during startup; retrying once", flush=True)


JOIN_PROBE_SECONDS = 10.0  # a wrong --address answers within this, instead of Ray's minutes of retries


def join(address: str, init: Callable[..., Any] | None = None, probe_seconds: float = JOIN_PROBE_SECONDS) -> None:
    """Join the cluster at ``address`` (``auto``, ``ray://host:port``, or ``host:port``).

    An explicit ``host:port`` is first probed with one TCP connect bounded by ``probe_seconds``: a wrong address
    is a :class:`RayStartError` naming what was tried, not a hang of several minutes inside ``ray.init``.
    """
    import ray

    probe_address(address, probe_seconds)
    (init or ray.init)(address=address, runtime_env=driver_runtime_env(), log_to_driver=True,
                       logging_level="WARNING")


def probe_address(address: str, seconds: float) -> None:
    """Raise :class:`RayStartError` when ``host:port`` (after an optional ``ray://``) takes no TCP connection."""
    import socket

    target = address.split("://", 1)[-1]
    host, sep, port = target.rpartition(":")
    if address == "auto" or not sep or not port.isdigit():
        return  # `auto` is found by Ray itself (RAY_ADDRESS or this machine's running head)
    default = "10001 for ray://" if address.startswith("ray://") else "6379, the GCS"
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=seconds):
            return
    except OSError as err:
        raise RayStartError(
            f"--address {address}: nothing answered on {host}:{port} within {seconds:.0f} s (tried a TCP connect: "
            f"{err.strerror or err}); check the head's address and port (default {default}), that it is "
            "running (`ray status` on the head), and that this machine can reach it") from None
