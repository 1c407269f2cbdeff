"""clusters/: the manifests validate against Ray's launcher schema and the RayJob fields kdray uses, and the
README's `ray job submit` block runs as written (token step included) against a 127.0.0.1 head (slow)."""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

from conftest import free_ports
from kdray.cli import build_parser
from kdray.results import load

REPO = Path(__file__).resolve().parents[1]
CLUSTERS = REPO / "clusters"
PY = sys.executable
RAY = str(Path(PY).parent / "ray")


def submit_block() -> str:
    """The bash block under "## Submit a sweep" in clusters/README.md, exactly as written there."""
    text = (CLUSTERS / "README.md").read_text()
    section = text.split("## Submit a sweep", 1)[1]
    found = re.search(r"```bash\n(.*?)```", section, re.S)
    assert found, "clusters/README.md lost its ray job submit block"
    return found.group(1)


def test_aws_yaml_validates_against_rays_launcher_schema() -> None:
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config = yaml.safe_load((CLUSTERS / "aws.yaml").read_text())
    errors = [f"{'.'.join(map(str, e.path))}: {e.message}" for e in jsonschema.Draft7Validator(schema).iter_errors(config)]
    assert errors == []
    assert config["available_node_types"]["head"]["node_config"]["IamInstanceProfile"]["Name"] != \
        config["available_node_types"]["gpu_worker"]["node_config"]["IamInstanceProfile"]["Name"]
    assert "ec2:RunInstances" in (CLUSTERS / "aws.yaml").read_text()  # the head launches workers
    assert f"ray[default,train,tune]=={ray.__version__}" in " ".join(config["setup_commands"])


def test_rayjob_yaml_has_the_fields_kuberay_reads() -> None:
    schema = json.loads((REPO / "tests" / "schemas" / "rayjob_fields.json").read_text())
    job = yaml.safe_load((CLUSTERS / "rayjob.yaml").read_text())
    errors = [f"{'.'.join(map(str, e.path))}: {e.message}" for e in jsonschema.Draft7Validator(schema).iter_errors(job)]
    assert errors == []
    spec = job["spec"]
    head = spec["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]
    assert head.get("dashboard-host") == "0.0.0.0"  # KubeRay's submitter pod must reach the job API
    assert spec["rayClusterSpec"]["rayVersion"] == ray.__version__
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert all(isinstance(v, str) for v in runtime_env["env_vars"].values())
    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["kdray", "sweep"]
    args = build_parser().parse_args(argv[1:])  # the entrypoint is a valid kdray command line
    assert args.address == "auto" and (REPO / args.space).is_file()


def test_readme_submit_block_is_well_formed() -> None:
    block = submit_block()
    assert "export RAY_AUTH_MODE=token" in block
    env_json = re.search(r"--runtime-env-json '([^']*)'", block)
    assert env_json, block
    runtime_env = json.loads(env_json.group(1))
    assert "pip" not in runtime_env  # the nodes have kdray: no per-node clone of the Python environment
    # the variant for an image without kdray, as the README spells it: the same env vars plus the pip entry
    variant = re.search(r"```json\n\s*(\{.*?\})\s*```", (CLUSTERS / "README.md").read_text(), re.S)
    assert variant, "clusters/README.md lost the pip runtime env variant"
    pip_env = json.loads(variant.group(1))
    assert pip_env["pip"] == ["-e ${RAY_RUNTIME_ENV_CREATE_WORKING_DIR}"]
    assert pip_env["env_vars"] == runtime_env["env_vars"]
    command = block.split(" -- ", 1)[1].split()
    args = build_parser().parse_args(command[1:])
    assert args.address == "auto" and (REPO / args.space).is_file()


@pytest.mark.slow
def test_readme_ray_job_submit_runs_as_written(tmp_path: Path, glue_dir: Path) -> None:
    """A 127.0.0.1 head with token auth (its own HOME and token, never the user's), then the README block as
    written: only the dashboard address, the space file and the bucket are replaced by local ones."""
    from test_sweep import space  # the tiny-bert, 32-row RTE space the other sweep tests run

    path = space(tmp_path, glue_dir, "job", {"mode": "grid"})
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "HOME": str(home),
           "PATH": f"{Path(PY).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_AUTH_MODE", None)
    env.pop("RAY_ADDRESS", None)
    subprocess.run([RAY, "get-auth-token", "--generate"], env=env, check=True, capture_output=True, timeout=60)
    gcs, dashboard, agent, runtime_agent = free_ports(4)
    head = subprocess.Popen(
        [RAY, "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(gcs), "--num-cpus", "3",
         "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard), "--dashboard-agent-listen-port",
         str(agent), "--runtime-env-agent-port", str(runtime_agent), "--disable-usage-stats"],
        env={**env, "RAY_AUTH_MODE": "token"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    block = submit_block()
    for old, new in (("http://127.0.0.1:8265", f"http://127.0.0.1:{dashboard}"),
                     ("search_spaces/glue.yaml", str(path)), ("s3://YOUR-BUCKET/kdray", str(tmp_path / "runs"))):
        assert block.count(old) == 1, old
        block = block.replace(old, new)
    try:
        out = None
        not_up_yet = ("Connection", "No available agent", "503")  # the job server, then its agent, come up late
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            out = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=REPO, env=env, capture_output=True,
                                 text=True, timeout=420)
            if out.returncode == 0 or not any(text in out.stdout + out.stderr for text in not_up_yet):
                break
            time.sleep(2)
        assert out is not None and out.returncode == 0, out.stdout[-4000:] + out.stderr[-3000:]
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=60)
    trials, _ = load(tmp_path / "runs" / "glue")
    assert len(trials) == 1 and trials["status"].iloc[0] == "TERMINATED" and not math.isnan(trials["dev_score"].iloc[0])
