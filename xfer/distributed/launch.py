"""Start an MXNet ``dist_sync`` job: a scheduler, parameter servers and workers.

MXNet's own launcher (``tools/launch.py`` with ``dmlc_tracker``) stops at once on Python 3.9 and
later (``'Thread' object has no attribute 'isAlive'``). This one does the same job with the
standard library: it starts the scheduler here, then the servers and the workers, locally or on
the hosts of a host file over ssh, each with the ``DMLC_*`` variables of its role; it forwards
their output line by line with a ``[worker 1]`` prefix, and it waits. When a worker fails, when
the time limit passes, or on Ctrl-C, every process of the job is stopped (locally by process
group; on ssh hosts by the process id each remote command reports first), so a failed job never
leaves servers waiting for workers that are gone.

Command line (the options of MXNet's ``tools/launch.py`` that apply)::

    python -m xfer.distributed.launch -n 2 [-s 1] [-H hosts] [--launcher local|ssh] \\
        [--timeout SECONDS] [--env NAME=VALUE] python train.py --its --arguments

The workers run the command; servers and the scheduler run ``python`` on MXNet's server loop
(importing MXNet with ``DMLC_ROLE=server`` serves and exits). Inside the workers, fit with
``kvstore="dist_sync"``: each worker reads its own part of the data (see ``docs/distributed.md``).
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from xfer.exceptions import DataFileNotFoundError, InvalidArgumentError

logger = logging.getLogger("xfer.distributed.launch")

#: The ssh command used to reach hosts (``--ssh-command`` replaces it).
DEFAULT_SSH = "ssh -o BatchMode=yes -o StrictHostKeyChecking=no"
#: Seconds the servers and the scheduler get to exit by themselves after the last worker.
SHUTDOWN_GRACE_S = 10.0
#: What servers and the scheduler run: importing MXNet with their DMLC_ROLE serves, then exits.
_SERVER_CODE = "import xfer._mxnet"


@dataclass
class _Process:
    role: str  # "scheduler", "server 0", "worker 1"
    host: str | None  # None: this machine
    popen: subprocess.Popen
    remote_pid: int | None = None
    output_done: threading.Event = field(default_factory=threading.Event)


def read_hostfile(path: str | os.PathLike) -> list[str]:
    """The hosts of a host file: one ``host`` or ``host:ssh_port`` per line; ``#`` comments.

    Raises
    ------
    DataFileNotFoundError
        The file does not exist.
    InvalidArgumentError
        It names no host.
    """
    path = Path(path)
    if not path.is_file():
        raise DataFileNotFoundError(f"Host file {path} does not exist: one host name per line.")
    hosts = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            hosts.append(line)
    if not hosts:
        raise InvalidArgumentError(f"Host file {path} names no host: one host name per line.")
    return hosts


def _free_port(host: str = "") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _address_towards(host: str) -> str:
    """This machine's address on the route to ``host`` (what the hosts reach the scheduler at)."""
    name = host.split(":", 1)[0]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((name, 22))  # UDP: nothing is sent; the kernel only picks a route
            return str(probe.getsockname()[0])
        except OSError:
            return socket.gethostbyname(socket.gethostname())


def _check_count(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidArgumentError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return value


def launch(
    command: Sequence[str],
    num_workers: int,
    num_servers: int | None = None,
    *,
    hosts: Sequence[str] | None = None,
    launcher: str = "local",
    env: dict[str, str] | None = None,
    timeout: float | None = None,
    port: int | None = None,
    scheduler_host: str | None = None,
    interface: str | None = None,
    workdir: str | None = None,
    remote_python: str | None = None,
    ssh_command: str = DEFAULT_SSH,
    stdout: IO[str] | None = None,
) -> int:
    """Run ``command`` as the workers of an MXNet distributed job, with its servers and scheduler.

    Parameters
    ----------
    command : sequence of str
        The worker command, e.g. ``["python", "train.py"]``.
    num_workers : int
        Worker processes (``DMLC_NUM_WORKER``).
    num_servers : int, optional
        Parameter-server processes (``DMLC_NUM_SERVER``); default: as many as workers.
    hosts : sequence of str, optional
        With ``launcher="ssh"``: the hosts (``host`` or ``host:ssh_port``); servers and workers
        are placed on them in turn. The scheduler runs on this machine.
    launcher : {"local", "ssh"}, default="local"
        Start every process on this machine, or the servers and workers over ssh.
    env : dict of str to str, optional
        Extra environment variables for every process (``OMP_NUM_THREADS``...).
    timeout : float, optional
        Stop the whole job after this many seconds (the return code is then 124).
    port : int, optional
        The scheduler's port (default: a free one).
    scheduler_host : str, optional
        The address the processes reach the scheduler at (default: ``127.0.0.1`` locally, this
        machine's address on the route to the first host over ssh).
    interface : str, optional
        The network interface ps-lite binds on every node (``DMLC_INTERFACE``, e.g. ``eth0``).
    workdir : str, optional
        Directory the remote commands start in (default: the current directory's path).
    remote_python : str, optional
        Python that runs the servers on the hosts (default: this interpreter's path).
    ssh_command : str, default=DEFAULT_SSH
        How to reach a host (``ssh -p`` is added for ``host:port``).
    stdout : file, optional
        Where the processes' prefixed output goes (default: ``sys.stdout``).

    Returns
    -------
    int
        0 when every worker succeeded; otherwise the first failing worker's return code (124 on
        timeout, 130 on interruption).

    Raises
    ------
    InvalidArgumentError
        Bad counts, an unknown launcher, ssh without hosts, or an empty command.
    """
    command = list(command)
    if not command:
        raise InvalidArgumentError("Give the worker command, e.g. ['python', 'train.py'].")
    _check_count("num_workers", num_workers, 1)
    num_servers = num_workers if num_servers is None else _check_count("num_servers", num_servers, 1)
    if launcher not in ("local", "ssh"):
        raise InvalidArgumentError(f"launcher must be 'local' or 'ssh', got {launcher!r}.")
    if launcher == "ssh" and not hosts:
        raise InvalidArgumentError("launcher='ssh' needs hosts: pass hosts= or -H <hostfile>.")
    if timeout is not None and not timeout > 0:
        raise InvalidArgumentError(f"timeout must be a positive number of seconds, got {timeout!r}.")
    if scheduler_host is None:
        scheduler_host = "127.0.0.1" if launcher == "local" else _address_towards(hosts[0])
    port = port or _free_port("127.0.0.1" if launcher == "local" else "")
    common = {
        "DMLC_PS_ROOT_URI": scheduler_host,
        "DMLC_PS_ROOT_PORT": str(port),
        "DMLC_NUM_WORKER": str(num_workers),
        "DMLC_NUM_SERVER": str(num_servers),
        **(env or {}),
    }
    if interface:
        common["DMLC_INTERFACE"] = interface
    if launcher == "local":
        common.setdefault("DMLC_NODE_HOST", "127.0.0.1")  # all traffic on the loopback
    job = _Job(stdout or sys.stdout, ssh_command, workdir or os.getcwd())
    local_server = [sys.executable, "-c", _SERVER_CODE]
    remote_server = [remote_python or sys.executable, "-c", _SERVER_CODE]
    try:
        job.start("scheduler", None, local_server, {**common, "DMLC_ROLE": "scheduler"})
        for index in range(num_servers):
            host = None if launcher == "local" else hosts[index % len(hosts)]
            server = local_server if host is None else remote_server
            job.start(f"server {index}", host, server, {**common, "DMLC_ROLE": "server"})
        for index in range(num_workers):
            host = None if launcher == "local" else hosts[index % len(hosts)]
            # DMLC_WORKER_ID only names the process in logs: ps-lite assigns kvstore ranks itself.
            variables = {**common, "DMLC_ROLE": "worker", "DMLC_WORKER_ID": str(index)}
            job.start(f"worker {index}", host, command, variables)
        return job.wait(timeout)
    except KeyboardInterrupt:
        job.stop_all("interrupted")
        return 130
    finally:
        job.stop_all(None)


class _Job:
    def __init__(self, stdout: IO[str], ssh_command: str, workdir: str):
        self.stdout = stdout
        self.ssh = shlex.split(ssh_command)
        self.workdir = workdir
        self.processes: list[_Process] = []
        self.lock = threading.Lock()

    # ------------------------------------------------------------------ start
    def start(self, role: str, host: str | None, command: list[str], variables: dict[str, str]) -> None:
        if host is None:
            popen = subprocess.Popen(
                command,
                env={**os.environ, **variables},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: stopped as a whole
                text=True,
                bufsize=1,
            )
        else:
            name, _, ssh_port = host.partition(":")
            exports = " ".join(f"{key}={shlex.quote(value)}" for key, value in variables.items())
            # The first line is the remote shell's pid, so that it can be stopped by id later.
            remote = (
                f"echo XFER_REMOTE_PID $$; cd {shlex.quote(self.workdir)} && "
                f"exec env {exports} {shlex.join(command)}"
            )
            ssh = self.ssh + (["-p", ssh_port] if ssh_port else []) + [name, remote]
            popen = subprocess.Popen(
                ssh,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                text=True,
                bufsize=1,
            )
        process = _Process(role, host, popen)
        self.processes.append(process)
        threading.Thread(target=self._forward, args=(process,), daemon=True).start()
        logger.info("Started %s%s: %s", role, f" on {host}" if host else "", shlex.join(command))

    def _forward(self, process: _Process) -> None:
        try:
            for line in process.popen.stdout:
                if process.remote_pid is None and line.startswith("XFER_REMOTE_PID "):
                    process.remote_pid = int(line.split()[1])
                    continue
                with self.lock:
                    self.stdout.write(f"[{process.role}] {line}")
                    self.stdout.flush()
        except (OSError, ValueError):  # the pipe closed while stopping
            pass
        finally:
            process.output_done.set()

    # ------------------------------------------------------------------ wait and stop
    def wait(self, timeout: float | None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        workers = [p for p in self.processes if p.role.startswith("worker")]
        others = [p for p in self.processes if not p.role.startswith("worker")]
        while True:
            codes = [p.popen.poll() for p in workers]
            failed = [(p, c) for p, c in zip(workers, codes) if c not in (None, 0)]
            if failed:
                process, code = failed[0]
                self.stop_all(f"{process.role} failed with return code {code}")
                return code
            dead = [p for p in others if p.popen.poll() not in (None, 0)]
            if dead and any(c is None for c in codes):
                self.stop_all(f"{dead[0].role} exited with return code {dead[0].popen.poll()}")
                return 1
            if all(c == 0 for c in codes):
                break
            if deadline is not None and time.monotonic() > deadline:
                self.stop_all(f"the time limit of {timeout:g} s passed")
                return 124
            time.sleep(0.05)
        # The workers are done: servers and scheduler shut down once ps-lite says so.
        grace = time.monotonic() + SHUTDOWN_GRACE_S
        while time.monotonic() < grace and any(p.popen.poll() is None for p in others):
            time.sleep(0.05)
        return 0

    def stop_all(self, reason: str | None) -> None:
        running = [p for p in self.processes if p.popen.poll() is None]
        if reason is not None and running:
            with self.lock:
                self.stdout.write(f"[launcher] {reason}: stopping {len(running)} processes\n")
                self.stdout.flush()
        for process in running:
            self._signal(process, signal.SIGTERM)
        deadline = time.monotonic() + 5.0
        for process in running:
            try:
                process.popen.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._signal(process, signal.SIGKILL)
                process.popen.wait()
        for process in self.processes:
            process.output_done.wait(2.0)

    def _signal(self, process: _Process, sig: int) -> None:
        if process.host is not None and process.remote_pid is not None:
            name, _, ssh_port = process.host.partition(":")
            subprocess.run(
                self.ssh + (["-p", ssh_port] if ssh_port else [])
                + [name, f"kill -{int(sig)} -- -{process.remote_pid} {process.remote_pid}"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=10,
                check=False,
            )
        try:
            os.killpg(process.popen.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def main(argv: Sequence[str] | None = None) -> int:
    """The ``python -m xfer.distributed.launch`` command line (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="python -m xfer.distributed.launch",
        description="Start an MXNet dist_sync job: scheduler, servers and workers.",
    )
    parser.add_argument("-n", "--num-workers", type=int, required=True, help="worker processes")
    parser.add_argument("-s", "--num-servers", type=int, help="server processes (default: -n)")
    parser.add_argument("-H", "--hostfile", help="hosts, one per line (ssh launcher)")
    parser.add_argument("--launcher", choices=("local", "ssh"), default=None,
                        help="local processes, or ssh to the hosts (default: ssh with -H)")
    parser.add_argument("--timeout", type=float, help="stop the job after this many seconds")
    parser.add_argument("--port", type=int, help="scheduler port (default: a free one)")
    parser.add_argument("--scheduler-host", help="address the hosts reach this machine at")
    parser.add_argument("--interface", help="network interface of ps-lite (DMLC_INTERFACE)")
    parser.add_argument("--workdir", help="directory remote commands start in (default: cwd)")
    parser.add_argument("--remote-python", help="python for the remote servers")
    parser.add_argument("--ssh-command", default=DEFAULT_SSH, help="how to reach a host")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="an environment variable for every process (repeatable)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the worker command")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    env = {}
    for item in args.env:
        name, sep, value = item.partition("=")
        if not sep or not name:
            parser.error(f"--env takes NAME=VALUE, got {item!r}")
        env[name] = value
    if not logger.handlers:  # this program's own messages, never through the root logger
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[launcher] %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    try:
        hosts = read_hostfile(args.hostfile) if args.hostfile else None
        return launch(
            command,
            args.num_workers,
            args.num_servers,
            hosts=hosts,
            launcher=args.launcher or ("ssh" if hosts else "local"),
            env=env,
            timeout=args.timeout,
            port=args.port,
            scheduler_host=args.scheduler_host,
            interface=args.interface,
            workdir=args.workdir,
            remote_python=args.remote_python,
            ssh_command=args.ssh_command,
        )
    except (InvalidArgumentError, DataFileNotFoundError) as error:
        parser.error(str(error))
        return 2  # pragma: no cover - parser.error exits


if __name__ == "__main__":
    sys.exit(main())
