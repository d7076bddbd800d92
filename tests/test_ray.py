"""Suites on a Ray cluster (`bench --executor ray`): the README's lines, run on this machine.

A two-node cluster (the README's `ray start` lines, HEAD 127.0.0.1, 1 CPU and 1 fake GPU per node: Ray takes a
declared GPU count without hardware) runs a 4-run suite, whose results must equal one-at-a-time runs in all but
timings and host fields. The one-node line (Ray starts a cluster of its own) runs a suite whose Ray worker is
killed mid-run. Every Ray process a test starts carries a token of its own, and none may be left behind.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import deep_update, require
from test_harness import TINY, write_suite

from tunebench.cli import main
from tunebench.harness import load_suite, run_on_worker
from tunebench.results import read_result

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()
# the first bash block of the README's Ray section
README_LINES = [
    line.split(" #", 1)[0].strip()
    for line in re.search(r"## Many machines: Ray\n.*?```bash\n(.*?)```", README, re.S).group(1).splitlines()
]
LIGHT = deep_update(TINY, {"data": {"max_train_samples": 16, "max_eval_samples": 8, "max_test_samples": 16}})
LIGHT = deep_update(LIGHT, {"train": {"max_steps": 1}})
HEAD = {"method_options": {"cache_features": False}}
STARTED = "block forever"  # what `ray start --block` prints once its node is up


def readme_line(start: str) -> list[str]:
    return shlex.split(next(line for line in README_LINES if line.startswith(start)))


@pytest.fixture(scope="module")
def ray_env() -> dict[str, str]:
    """The environment of every Ray process here: token authentication, with a token of this module's own."""
    require("ray")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return env | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}


def ours(env: dict[str, str]) -> list[psutil.Process]:
    """The live processes that carry env's token: the Ray processes this module started, and their children."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get("RAY_AUTH_TOKEN") == env["RAY_AUTH_TOKEN"] and process.status() != "zombie":
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def wait_for(condition, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {seconds} s")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_node(command: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    """`ray start ... --block`, once its node is up."""
    with open(log, "w") as output:
        node = subprocess.Popen(command, cwd=log.parent, env=env, stdout=output, stderr=output)
    wait_for(lambda: STARTED in log.read_text() or node.poll() is not None, 120, f"{command[1:3]} started")
    assert node.poll() is None, log.read_text()[-3000:]
    return node


@pytest.fixture()
def two_nodes(ray_env, tmp_path_factory) -> str:
    """The README's head and second node, on this machine; yields the head's address. Stopped by SIGTERM."""
    folder = tmp_path_factory.mktemp("nodes")  # their working directory is not the driver's
    address = f"127.0.0.1:{free_port()}"
    nodes = []
    try:
        for start in ("ray start --head", "ray start --address"):
            words = [w.replace("HEAD:6379", address).replace("6379", address.split(":")[1]) for w in readme_line(start)]
            command = [str(Path(sys.executable).with_name("ray")), *words[1:], "--num-cpus", "1", "--num-gpus", "1"]
            command += ["--include-dashboard=false"] * (start == "ray start --head") + ["--block"]
            nodes.append(start_node(command, folder / f"node{len(nodes)}.log", ray_env))
        yield address
    finally:
        for node in reversed(nodes):
            node.send_signal(signal.SIGTERM)  # `ray start --block` stops its node's processes, then itself
            node.wait(timeout=120)
        wait_for(lambda: not ours(ray_env), 60, "every Ray process gone")


def bench(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "tunebench.cli", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def comparable(cwd: Path, out: str) -> dict[str, dict]:
    """Each result in the folder out (relative to cwd) without timings (clock times, *_seconds, rates) and host
    fields (environment, process RSS); out itself, where a result names it, as OUT."""
    results = {}
    for path in sorted((cwd / out).glob("*.json")):
        result = json.loads(path.read_text().replace(out, "OUT"))
        results[path.name] = _without_timings(result)
    return results


def _without_timings(value):
    if isinstance(value, dict):
        timing = re.compile(r"seconds|per_second|_at$|^environment$|peak_rss_bytes")
        return {k: _without_timings(v) for k, v in value.items() if not timing.search(k)}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


@pytest.mark.slow
def test_a_suite_on_two_ray_nodes_equals_one_run_at_a_time(two_nodes, ray_env, tmp_path, capsys, monkeypatch):
    suite = write_suite(tmp_path / "tiny.yaml", ["lora", "head"], [1, 2], config=LIGHT, methods={"head": HEAD})
    alone = bench("bench", str(suite), "--out", "alone/tiny", cwd=tmp_path, env=ray_env)
    assert alone.returncode == 0, alone.stderr[-3000:]
    line = readme_line("tunebench bench gpu --executor ray --address HEAD:6379")
    line = [str(suite) if w == "gpu" else w.replace("HEAD:6379", two_nodes) for w in line]
    on_ray = bench(*line[1:], "--out", "ray/tiny", cwd=tmp_path, env=ray_env)
    assert on_ray.returncode == 0, on_ray.stdout[-3000:] + on_ray.stderr[-3000:]
    assert "4 runs, 0 done, 4 to run" in on_ray.stdout and "ok: " in on_ray.stdout

    expected = comparable(tmp_path, "alone/tiny")
    assert len(expected) == 4 and comparable(tmp_path, "ray/tiny") == expected
    for result in map(read_result, (tmp_path / "ray" / "tiny").glob("*.json")):
        run_dir = tmp_path / result["run_dir"]  # relative to the driver's folder, as the run wrote it
        alone_dir = tmp_path / "alone" / "tiny" / "runs" / run_dir.name
        assert (run_dir / "test_predictions.json").read_text() == (alone_dir / "test_predictions.json").read_text()
        assert (run_dir / "output.log").stat().st_size > 0
        assert (run_dir / "best").is_dir()  # one machine: the worker wrote the driver's very folder, checkpoint too
    # two runs at once: one on each node, each of which has one GPU
    spans = [(r["started_at"], r["finished_at"]) for r in map(read_result, (tmp_path / "ray" / "tiny").glob("*.json"))]
    assert any(a[0] < b[1] and b[0] < a[1] for i, a in enumerate(spans) for b in spans[i + 1 :])

    monkeypatch.chdir(tmp_path)  # in this process from here: these train nothing, and reach no cluster
    assert main([*line[1:], "--out", "ray/tiny"]) == 0 and "4 runs, 4 done, 0 to run" in capsys.readouterr().out
    assert main([*line[1:], "--out", "ray/tiny", "--dry-run", "--force"]) == 0
    assert "4 runs, 0 done, 4 to run" in capsys.readouterr().out


@pytest.mark.slow
def test_a_run_whose_ray_worker_dies_is_failed_and_a_rerun_completes_it(ray_env, tmp_path):
    suite = write_suite(tmp_path / "one.yaml", ["head"], [1], config=LIGHT, methods={"head": HEAD})
    _, [run] = load_suite(suite)
    line = [str(suite) if w == "quick" else w for w in readme_line("tunebench bench quick --executor ray")]
    command = [sys.executable, "-m", "tunebench.cli", *line[1:], "--out", "results"]
    driver = subprocess.Popen(command, cwd=tmp_path, env=ray_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    result = tmp_path / "results" / f"{run.run_id}.json"
    try:
        wait_for(lambda: (read_result(result) or {}).get("status") == "running", 300, "the run started")
        [training] = [p for p in ours(ray_env) if f"{run.run_id}.json" in " ".join(p.cmdline())]
        worker = training.parent()
        assert worker.cmdline()[0].startswith("ray::"), worker.cmdline()
        worker.kill()
        output = driver.communicate(timeout=300)[0].decode()
    finally:
        driver.kill()
        driver.wait()
    assert driver.returncode == 1, output[-3000:]
    recorded = read_result(result)
    assert recorded["status"] == "failed" and recorded["retry"] is True
    assert recorded["error"].startswith("its Ray worker ended before the run did: "), recorded["error"]
    wait_for(lambda: not training.is_running() or training.status() == "zombie", 30, "the run died with its worker")

    rerun = bench(*command[3:], cwd=tmp_path, env=ray_env)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert "1 runs, 0 done, 1 to run" in rerun.stdout
    assert read_result(result)["status"] == "ok" and "retry" not in read_result(result)
    wait_for(lambda: not ours(ray_env), 60, "every Ray process gone")  # the one-node cluster stopped with bench


@pytest.mark.slow
def test_without_a_shared_filesystem_the_driver_writes_what_comes_back(tmp_path, monkeypatch):
    """What a worker sends back (pickled, as Ray sends it) fills a driver's folder that the worker never saw:
    the same result, predictions and logs; the checkpoint stays where it was made."""
    suite = write_suite(tmp_path / "one.yaml", ["head"], [1], config=LIGHT, methods={"head": HEAD})
    _, [run] = load_suite(suite)
    worker_node, driver_node = tmp_path / "worker", tmp_path / "driver"
    worker_node.mkdir()
    driver_node.mkdir()
    monkeypatch.chdir(worker_node)
    outcome = pickle.loads(pickle.dumps(run_on_worker(run, Path("results"), 1, {})))
    assert outcome.code == 0
    monkeypatch.chdir(driver_node)
    outcome.keep(Path("results") / f"{run.run_id}.json")
    made, kept = worker_node / "results", driver_node / "results"
    assert (kept / f"{run.run_id}.json").read_bytes() == (made / f"{run.run_id}.json").read_bytes()
    assert read_result(kept / f"{run.run_id}.json")["status"] == "ok"
    for name in ("test_predictions.json", "config.yaml", "output.log"):
        assert (kept / "runs" / run.run_id / name).read_bytes() == (made / "runs" / run.run_id / name).read_bytes()
    assert (made / "runs" / run.run_id / "best").is_dir() and not (kept / "runs" / run.run_id / "best").exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--executor", "slurm"], "unknown executor 'slurm'; choose one of: local, ray"),
        (["--executor", "ray", "--jobs", "2"], "with --executor ray, Ray places them"),
        (["--address", "127.0.0.1:6379"], "--address names a Ray cluster: it goes with --executor ray"),
    ],
)
def test_bad_executor_flags_are_one_line_errors(tmp_path, capsys, flags, message):
    suite = write_suite(tmp_path / "one.yaml", ["head"], [1])
    assert main(["bench", str(suite), "--out", str(tmp_path / "r"), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r").exists()


def test_without_ray_the_executor_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # importing it now raises ImportError, as when it is missing
    suite = write_suite(tmp_path / "one.yaml", ["head"], [1])
    assert main(["bench", str(suite), "--out", str(tmp_path / "r"), "--executor", "ray"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'tunebench[ray]'" in err and len(err.strip().splitlines()) == 1, err
