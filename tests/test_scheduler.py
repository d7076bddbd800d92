"""Runs side by side (tunebench.scheduler): real child processes report the devices and threads they see and when
they ran; the scheduler must never give one device to two runs at once, nor start more runs than it may."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tunebench.errors import UserError
from tunebench.scheduler import plan_slots, run_in_slots

# a child that records what it sees, then holds its slot for a moment
CHILD = """
import json, os, sys, time
start = time.monotonic()
time.sleep(float(sys.argv[2]))
seen = {k: os.environ.get(k) for k in ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS")}
json.dump({"start": start, "end": time.monotonic(), **seen}, open(sys.argv[1], "w"))
"""


def child_starter(folder: Path, seconds):
    """start(job, extra_env) for run_in_slots: a child that runs for seconds(job)."""

    def start(job: int, extra_env: dict[str, str]) -> subprocess.Popen:
        env = dict(os.environ) | extra_env
        command = [sys.executable, "-c", CHILD, str(folder / f"{job}.json"), str(seconds(job))]
        return subprocess.Popen(command, env=env)

    return start


def test_runs_of_two_devices_share_five_without_overlap(tmp_path):
    slots = plan_slots(None, "0,1,2,3,4", processes=2)
    assert slots.at_once == 2
    ended = []
    uneven = child_starter(tmp_path, lambda job: 0.3 + 0.5 * (job % 3))  # runs end out of step
    run_in_slots(range(8), slots, uneven, lambda job, code: ended.append((job, code)))
    assert sorted(ended) == [(job, 0) for job in range(8)]
    seen = [json.loads((tmp_path / f"{job}.json").read_text()) for job in range(8)]
    for run in seen:
        assert len(run["CUDA_VISIBLE_DEVICES"].split(",")) == 2
        assert int(run["OMP_NUM_THREADS"]) >= 1
    overlapping = [
        (a, b) for i, a in enumerate(seen) for b in seen[i + 1 :] if a["start"] < b["end"] and b["start"] < a["end"]
    ]
    assert overlapping, "no two runs ran at once"
    for a, b in overlapping:
        assert not set(a["CUDA_VISIBLE_DEVICES"].split(",")) & set(b["CUDA_VISIBLE_DEVICES"].split(","))
    for run in seen:  # never more than two at once
        assert sum(other["start"] <= run["start"] < other["end"] for other in seen) <= 2
    assert {d for run in seen for d in run["CUDA_VISIBLE_DEVICES"].split(",")} == {"0", "1", "2", "3", "4"}


def test_jobs_split_the_cores_and_a_lone_run_keeps_the_environment():
    cores = len(os.sched_getaffinity(0))
    assert plan_slots(None, None).threads is None and plan_slots(1, None).threads is None
    for jobs in (2, 3, 2 * cores):
        slots = plan_slots(jobs, None)
        assert slots.at_once == jobs and slots.devices is None
        assert slots.threads >= 1 and (slots.threads * jobs <= cores or slots.threads == 1)
    assert plan_slots(1, "0,1,2").at_once == 1  # --jobs caps what the devices would allow
    assert plan_slots(None, [0, 1, 2], processes=2).at_once == 1  # a third device alone holds no run


def test_a_stop_ends_the_runs_in_flight_and_starts_no_more(tmp_path):
    started = []

    def start(job: int, extra_env: dict[str, str]) -> subprocess.Popen:
        started.append(job)
        return child_starter(tmp_path, lambda job: 0.2 if job == 0 else 60)(job, extra_env)

    def finished(job: int, code: int) -> None:
        raise KeyboardInterrupt  # what the harness does when a run was interrupted

    begun = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_in_slots(range(5), plan_slots(2, None), start, finished)
    assert time.monotonic() - begun < 30  # the 60-second run in flight was ended, not waited for
    # job 0's slot waits for its end to be handled, which stops the scheduler: job 2 never starts
    assert sorted(started) == [0, 1]
    assert not [job for job in started if job and (tmp_path / f"{job}.json").exists()]


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_slot_starts_its_next_run_only_once_the_last_end_is_counted(tmp_path, jobs):
    """The suite line counts starts and ends (harness._Progress): a start must never come before the end that
    freed its slot is counted, or one-at-a-time reads "0/3 done, 2 in flight". finished() takes its time here, as
    reading a result does."""
    counted = {"started": 0, "ended": 0}
    in_flight = []

    def start(job: int, extra_env: dict[str, str]) -> subprocess.Popen:
        counted["started"] += 1
        in_flight.append(counted["started"] - counted["ended"])
        return child_starter(tmp_path, lambda job: 0.05)(job, extra_env)

    def finished(job: int, code: int) -> None:
        time.sleep(0.3)
        counted["ended"] += 1

    run_in_slots(range(4), plan_slots(jobs, None), start, finished)
    assert counted == {"started": 4, "ended": 4}
    assert max(in_flight) == jobs, in_flight


@pytest.mark.parametrize(
    ("jobs", "devices", "processes", "message"),
    [
        (0, None, 1, "jobs is how many runs go at once"),
        (-2, None, 1, "jobs is how many runs go at once"),
        (None, "0,x", 1, "devices takes distinct device numbers"),
        (None, "1,1", 1, "devices takes distinct device numbers"),
        (None, "", 1, "devices takes distinct device numbers"),
        (None, "0,1", 4, "each run takes 4 devices"),
    ],
)
def test_bad_slots_are_user_errors(jobs, devices, processes, message):
    with pytest.raises(UserError, match=message):
        plan_slots(jobs, devices, processes)


KILLED_PARENT = """
import subprocess, sys
from tunebench.harness import _die_with_parent
from tunebench.scheduler import plan_slots, run_in_slots

def start(job, extra_env):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], preexec_fn=_die_with_parent)
    print(child.pid, flush=True)
    return child

run_in_slots(range(4), plan_slots(2, None), start, lambda job, code: None)
"""


def _alive(pid: int) -> bool:
    try:
        return "\tZ" not in Path(f"/proc/{pid}/status").read_text().split("State:")[1][:4]  # a zombie is dead
    except (FileNotFoundError, IndexError):
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_runs_side_by_side_die_with_a_killed_bench():
    """Children started from the pool's threads still die with the bench (a SIGKILL leaves no run writing)."""
    parent = subprocess.Popen([sys.executable, "-c", KILLED_PARENT], stdout=subprocess.PIPE, text=True)
    pids = [int(parent.stdout.readline()) for _ in range(2)]
    assert all(_alive(pid) for pid in pids)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in pids)
