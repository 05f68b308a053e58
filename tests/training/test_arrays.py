"""NpyPool: bounded open files whatever the number of arrays; rows and shapes as np.load gives."""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from talkinghead.errors import TalkingHeadError
from talkinghead.training.arrays import NpyPool, open_file_count


def test_rows_shapes_and_the_bound(tmp_path):
    paths = []
    for i in range(20):
        p = tmp_path / f"a{i}.npy"
        np.save(p, np.arange(30, dtype=np.float64).reshape(10, 3) + i)
        paths.append(p)
    pool = NpyPool(max_open=4)
    before = open_file_count()
    for p in paths:
        assert pool.shape(p) == (10, 3)
        rows = pool.rows(p, 2, 5)
        assert rows.dtype == np.float32 and not isinstance(rows, np.memmap)
        np.testing.assert_array_equal(rows, np.load(p)[2:5])
        np.testing.assert_array_equal(pool.row(p, 9), np.load(p)[9])
        assert len(pool) <= 4
    if before is not None:
        assert open_file_count() - before <= 4
    assert pool.shape(paths[0]) == (10, 3)  # remembered
    clone = pickle.loads(pickle.dumps(pool))  # what a DataLoader worker receives
    assert len(clone) == 0 and clone.shape(paths[1]) == (10, 3)
    with pytest.raises(TalkingHeadError, match="unreadable array"):
        pool.rows(tmp_path / "missing.npy")
    with pytest.raises(ValueError):
        NpyPool(0)


def test_thousands_of_arrays_under_a_descriptor_limit_of_256(tmp_path):
    n = 1000
    for i in range(n):
        np.save(tmp_path / f"x{i}.npy", np.full((4, 2), i, np.float32))
    script = textwrap.dedent(
        f"""
        import resource, sys
        from pathlib import Path
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
        import numpy as np
        from talkinghead.training.arrays import NpyPool
        root = Path({str(tmp_path)!r})
        pool = NpyPool(max_open=64)
        total = sum(float(pool.rows(root / f"x{{i}}.npy", 1, 2)[0, 0]) for i in range({n}))
        assert total == sum(range({n})), total
        # Without the pool every map keeps its descriptor: the limit is hit.
        try:
            kept = [np.load(root / f"x{{i}}.npy", mmap_mode="r") for i in range({n})]
        except OSError as exc:
            print("unbounded fails:", exc)
        """
    )
    src = Path(__file__).resolve().parents[2] / "src"
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr
    assert "Too many open files" in out.stdout
