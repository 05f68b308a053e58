"""Run a command under `accelerate launch` as N CPU processes (gloo), bounded in time.

``launch(["train-motion", DATA, OUT, ...])`` runs ``python -m talkinghead ...`` as two
processes on 127.0.0.1 (a free port each time); ``launch([script.py, ...], module=False)``
runs a script; ``launch_commands([[...], [...]])`` runs several commands in turn in one
launch (`_launched_commands.py`). Without GPUs the processes train on CPU:
`build_accelerator` sees the launcher's WORLD_SIZE and turns on accelerate's CPU mode.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

REPO_SRC = Path(__file__).resolve().parents[1] / "src"
COMMANDS_SCRIPT = Path(__file__).resolve().with_name("_launched_commands.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(
    args: Sequence[str],
    *,
    num_processes: int = 2,
    mixed_precision: str = "no",
    module: bool = True,
    timeout: float = 300,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """`accelerate launch` of ``-m talkinghead ARGS`` (or a script); raises on a timeout."""
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        str(num_processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        mixed_precision,
        "--dynamo_backend",
        "no",
        "--main_process_ip",
        "127.0.0.1",
        "--main_process_port",
        str(free_port()),
        "--num_cpu_threads_per_process",
        "1",
    ]
    if module:
        cmd += ["-m", "talkinghead"]
    cmd += [str(a) for a in args]
    full_env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO_SRC), os.environ.get("PYTHONPATH", "")]),
        "CUDA_VISIBLE_DEVICES": "",
        **(env or {}),
    }
    return subprocess.run(
        cmd, env=full_env, capture_output=True, text=True, timeout=timeout, check=False
    )


def launch_commands(commands: Sequence[Sequence[str]], **kwargs) -> subprocess.CompletedProcess:
    """One `launch` whose processes run the talkinghead ``commands`` one after another.

    A split run, its resume and the straight run pay the processes' start-up once instead
    of three times; each command still reads only what the ones before it wrote. Order
    them so that another run comes between a split and its resume: then nothing a command
    leaves in memory can stand in for what the resume must load from disk.
    """
    payload = json.dumps([[str(a) for a in args] for args in commands])
    return launch([COMMANDS_SCRIPT, payload], module=False, **kwargs)
