"""Which job a free worker takes next: jobs that share an avatar stay on one worker.

Registering a source (face analysis, the two extractor networks) is the costly
part of a job besides rendering. Its result goes to the avatar disk cache, which every
worker reads; but two workers that start on the same new source at once both register
it. So the queue groups jobs by their avatar (source, crop, size: `BatchJob.avatar_key`):
a worker keeps taking jobs of its group while there are any, then starts the largest
group no other worker is on, and shares one only when every group is taken (more
workers than sources).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Hashable, Iterable

from talkinghead.batch.jobs import BatchJob


class AffinityQueue:
    """Pending jobs, grouped by avatar, handed out per worker slot."""

    def __init__(self, jobs: Iterable[BatchJob] = ()) -> None:
        self._groups: OrderedDict[str, deque[BatchJob]] = OrderedDict()
        self._slot_group: dict[Hashable, str] = {}
        for job in jobs:
            self.push(job)

    def __len__(self) -> int:
        return sum(len(g) for g in self._groups.values())

    def __bool__(self) -> bool:
        return any(self._groups.values())

    def push(self, job: BatchJob, *, front: bool = False) -> None:
        """Add a job; `front`: ahead of its group (a retry goes first)."""
        group = self._groups.setdefault(job.avatar_key, deque())
        group.appendleft(job) if front else group.append(job)

    def next_for(self, slot: Hashable) -> BatchJob | None:
        """The job worker `slot` should run next, or None when none is left."""
        group = self._slot_group.get(slot)
        if group is None or not self._groups.get(group):
            group = self._pick_group(slot)
            if group is None:
                return None
        self._slot_group[slot] = group
        return self._groups[group].popleft()

    def release(self, slot: Hashable) -> None:
        """Worker `slot` is gone: its group is free for the others."""
        self._slot_group.pop(slot, None)

    def _pick_group(self, slot: Hashable) -> str | None:
        pending = [(key, len(jobs)) for key, jobs in self._groups.items() if jobs]
        if not pending:
            return None
        held = {g for s, g in self._slot_group.items() if s != slot}
        free = [item for item in pending if item[0] not in held]
        # Largest first: long groups start early, so the batch does not end on one of them.
        return max(free or pending, key=lambda item: item[1])[0]


__all__ = ["AffinityQueue"]
