"""The MXNet job launcher: failures, time limits and ssh hosts stop every process (a real
localhost job runs in test_jobs.py)."""

from __future__ import annotations

import io
import os
import re
import stat
import sys
import time
from pathlib import Path

import pytest

from xfer.distributed.launch import launch, main, read_hostfile
from xfer.exceptions import DataFileNotFoundError, InvalidArgumentError

ROOT = Path(__file__).resolve().parents[2]
ENV = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _fake_ssh(tmp_path: Path) -> str:
    """An 'ssh' that logs its arguments and runs the remote command here."""
    script = tmp_path / "fake-ssh"
    script.write_text(
        "#!/bin/bash\n"
        f'echo "$@" >> {tmp_path / "ssh.log"}\n'
        'while [ "$1" = "-p" ] || [ "$1" = "-o" ]; do shift 2; done\n'
        'shift\n'  # the host
        'exec bash -c "$1"\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def test_a_failing_worker_stops_every_process(tmp_path):
    worker = "import os, sys, time; print('up', flush=True); sys.exit(3) if os.environ['DMLC_WORKER_ID'] == '1' else time.sleep(120)"
    output = io.StringIO()
    started = time.monotonic()
    code = launch([sys.executable, "-c", worker], num_workers=2, env=ENV, timeout=100, stdout=output)
    assert code == 3
    assert time.monotonic() - started < 60
    log = output.getvalue()
    assert "[launcher] worker 1 failed with return code 3: stopping" in log
    assert "[worker 0] up" in log


def test_time_limit_stops_the_job():
    output = io.StringIO()
    code = launch([sys.executable, "-c", "import time; time.sleep(120)"], num_workers=1, env=ENV,
                  timeout=1.0, stdout=output)
    assert code == 124
    assert "the time limit of 1 s passed: stopping" in output.getvalue()


def test_ssh_launcher_places_processes_on_hosts_and_stops_them_there(tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("# the machines\nnode-a\nnode-b:2222\n\n")
    assert read_hostfile(hosts) == ["node-a", "node-b:2222"]
    worker = "import os, sys; print(os.environ['DMLC_ROLE'], os.environ['DMLC_PS_ROOT_URI']); sys.exit(5)"
    output = io.StringIO()
    code = launch([sys.executable, "-c", worker], num_workers=2, num_servers=1, hosts=read_hostfile(hosts),
                  launcher="ssh", env=ENV, timeout=100, scheduler_host="10.1.2.3",
                  ssh_command=_fake_ssh(tmp_path), workdir=str(tmp_path), stdout=output)
    assert code == 5
    assert "[worker 0] worker 10.1.2.3" in output.getvalue()
    calls = (tmp_path / "ssh.log").read_text().splitlines()
    assert len([c for c in calls if "XFER_REMOTE_PID" in c]) == 3  # logged in any order
    server = next(c for c in calls if "DMLC_ROLE=server" in c)
    workers = sorted(c for c in calls if "DMLC_ROLE=worker" in c)
    assert server.startswith("node-a ") and "DMLC_NUM_WORKER=2" in server
    assert workers[0].startswith("-p 2222 node-b ") and "DMLC_WORKER_ID=1" in workers[0]
    assert workers[1].startswith("node-a ") and f"cd {tmp_path}" in workers[1]
    assert any(re.match(r"node-a kill -15 -- -\d+ \d+", c) for c in calls)  # the server, by its pid


def test_bad_launches_are_refused(tmp_path, capsys):
    with pytest.raises(InvalidArgumentError, match="num_workers must be an integer >= 1, got 0"):
        launch(["python"], num_workers=0)
    with pytest.raises(InvalidArgumentError, match="launcher='ssh' needs hosts"):
        launch(["python"], num_workers=1, launcher="ssh")
    with pytest.raises(InvalidArgumentError, match="Give the worker command"):
        launch([], num_workers=1)
    with pytest.raises(DataFileNotFoundError, match="Host file .* does not exist"):
        read_hostfile(tmp_path / "missing")
    (tmp_path / "empty").write_text("# nobody\n")
    with pytest.raises(SystemExit):
        main(["-n", "2", "-H", str(tmp_path / "empty"), "python", "x.py"])
    assert "names no host" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["-n", "1", "--env", "NOVALUE", "python", "x.py"])
    assert "--env takes NAME=VALUE" in capsys.readouterr().err
    assert os.environ.get("DMLC_ROLE") is None
