"""Run several `talkinghead` commands one after another in each process of one launch.

Started by `_accelerate_launch.launch_commands`: ``python _launched_commands.py JSON``,
JSON being a list of argument lists. Each command runs as ``python -m talkinghead ARGS``
would (the same `main`, its exit status checked), and reads what the one before it wrote
from disk; only the process start-up (seconds per launch) and the gloo group are shared.
A trainer's ``end_training`` would take the group down, so it is kept until the last
command has run.
"""

from __future__ import annotations

import json
import sys

from accelerate.state import PartialState

from talkinghead.cli import main

destroy_process_group = PartialState.destroy_process_group
PartialState.destroy_process_group = lambda self, group=None: None
for args in json.loads(sys.argv[1]):
    sys.argv = ["talkinghead", *args]
    try:
        main()
    except SystemExit as done:
        if done.code not in (0, None):
            raise SystemExit(f"talkinghead {' '.join(args)}: exit status {done.code}") from None
destroy_process_group(PartialState())
