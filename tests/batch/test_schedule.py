"""Jobs sharing an avatar go to the same worker, when they can."""

from __future__ import annotations

from pathlib import Path

from talkinghead.batch.jobs import BatchJob
from talkinghead.batch.schedule import AffinityQueue


def job(key: str, source: str) -> BatchJob:
    return BatchJob(key, Path(f"/{source}.png"), Path(f"/{key}.wav"), f"/{key}.mp4")


def drain(queue: AffinityQueue, order: list[int]) -> dict[int, list[str]]:
    """Slots ask in `order` (repeating); what each got."""
    got: dict[int, list[str]] = {slot: [] for slot in order}
    while queue:
        for slot in order:
            taken = queue.next_for(slot)
            if taken is not None:
                got[slot].append(taken.key)
    return got


def test_each_worker_keeps_to_its_source() -> None:
    jobs = [job("a1", "A"), job("b1", "B"), job("a2", "A"), job("c1", "C"), job("a3", "A")]
    jobs.append(job("b2", "B"))
    got = drain(AffinityQueue(jobs), [0, 1])
    # Largest group first; the second worker takes a group nobody is on.
    assert got[0] == ["a1", "a2", "a3"]
    assert got[1] == ["b1", "b2", "c1"]


def test_more_workers_than_sources_share_the_largest() -> None:
    queue = AffinityQueue([job("a1", "A"), job("a2", "A"), job("a3", "A"), job("b1", "B")])
    assert queue.next_for(0).key == "a1"
    assert queue.next_for(1).key == "b1"
    assert queue.next_for(2).key == "a2"  # every group is taken: share one
    assert queue.next_for(1).key == "a3"
    assert queue.next_for(0) is None and not queue


def test_a_retried_job_goes_first_and_a_gone_worker_frees_its_group() -> None:
    queue = AffinityQueue([job("a1", "A"), job("a2", "A"), job("b1", "B")])
    first = queue.next_for(0)
    queue.release(0)  # worker 0 died running a1
    queue.push(first, front=True)
    assert len(queue) == 3
    assert queue.next_for(1).key == "a1"  # the freed group, its retry first
    assert queue.next_for(1).key == "a2"
    assert queue.next_for(2).key == "b1"
