"""Issue 25: `monitor verify` for cron against moto's EC2 API, with the real aws CLI as
the state's verify command and the local Slack receiver of test_slack.py. A build whose
AMI is deregistered drifts: two cron runs give exactly one alert, and `monitor check`
flags the build."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Iterator

import pytest
from test_slack import Env, Receiver, slack  # noqa: F401  (slack is a fixture)
from test_sync import VENV_BIN, free_port, moto_command, start, stop

PLAN = """name = "ami"
[[state]]
id = 5
name = "bake"
expected = "1m"
verify = 'test "$(aws ec2 describe-images --image-ids "$BUILDSTATE_META_ami_id" --query "Images[0].State" --output text)" = available || { echo "image $BUILDSTATE_META_ami_id is not available" >&2; exit 1; }'
"""


@pytest.fixture(scope="module")
def ec2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    tmp = tmp_path_factory.mktemp("moto-ec2")
    port = free_port()
    proc = start(moto_command(port), port, tmp, "moto_server")
    try:
        yield {
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
        }
    finally:
        stop(proc)


def aws(env: dict[str, str], *args: str) -> dict:
    r = subprocess.run([str(VENV_BIN / "aws"), "ec2", *args, "--output", "json"], env={**os.environ, **env}, capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, f"aws ec2 {args}: {r.stderr}"
    return json.loads(r.stdout) if r.stdout.strip() else {}


def test_a_deregistered_image_is_drift_alerted_once_and_flagged(ec2: dict[str, str], slack: Receiver, tmp_path: Path) -> None:  # noqa: F811
    base = aws(ec2, "describe-images", "--owners", "amazon", "--query", "Images[0].ImageId")
    instance = aws(ec2, "run-instances", "--image-id", str(base), "--count", "1", "--instance-type", "t2.micro")["Instances"][0]["InstanceId"]
    ami = aws(ec2, "create-image", "--instance-id", instance, "--name", "golden-rhel9")["ImageId"]
    env = Env(tmp_path, slack)
    env.env.update(ec2)
    env.plan.write_text(PLAN)
    env.run("init-state", "img-1", "--cloud", "aws", "--image", "rhel9", "--plan", str(env.plan), "--meta", f"ami_id={ami}")
    env.run("update-state", "img-1", "start", "5")
    env.run("update-state", "img-1", "complete", "5")
    before = len(slack.messages)

    # The image is there: the verify passes, nothing to say.
    r = env.run("monitor", "verify", "--older-than", "0s", "--json")
    assert [(b["build_id"], b["outcome"]) for b in json.loads(r.stdout)["builds"]] == [("img-1", "passed")], r.stdout
    env.run("monitor", "check")

    aws(ec2, "deregister-image", "--image-id", ami)
    # Two cron runs: the drift is found twice, alerted once.
    for _ in range(2):
        r = env.run("monitor", "verify", "--older-than", "0s", "--json", check=13)
        (b,) = json.loads(r.stdout)["builds"]
        assert (b["outcome"], b["state"]) == ("drift", 5), r.stdout
        env.run("monitor", "deliver", "--budget", "10s")
    drift = [m for m in slack.messages[before:] if "drifted" in m["text"]]
    assert len(drift) == 1, slack.messages[before:]
    assert drift[0]["text"] == "Build img-1 drifted at state 5 (bake): its verify failed", drift[0]["text"]
    assert ami in json.dumps(drift[0]), drift[0]
    assert slack.problems == []
    r = env.run("monitor", "check", "--json", check=13)
    (finding,) = json.loads(r.stdout)
    assert (finding["build_id"], finding["what"], finding["state"]) == ("img-1", "drifted", 5), r.stdout
    state = json.loads(env.run("check-state", "img-1", "--json", check=None).stdout)
    assert (state["decision"], state["next_state"]) == ("rerun", 5), state
