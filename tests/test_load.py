"""Many clients at once: the queue's order, positions, per-client cap and per-client interrupt.

In-process, the JobRunner with several owners: every job's announced positions start at the number of jobs ahead
of it and go down by one at a time; interrupt by owner stops only that owner's job.
Over HTTP, the real server (tiny model, CPU): 20 concurrent txt2img requests from 4 clients (X-Client-Id), held
behind a long job of one client so that the queue can be inspected; each answer carries its own seed's image
(pixel-equal to a single reference request), the jobs run in arrival order, the per-client cap answers 429,
one client's interrupt cancels only its own job, and 66 requests waiting at once are all queued.
"""

from __future__ import annotations

import base64
import io
import json
import re
import threading
from collections import defaultdict

import numpy as np
import pytest
import requests
from PIL import Image

from pipelines.jobs import Cancelled, EventKind, JobRunner
from tests.waiting import wait_for

pytestmark = pytest.mark.server  # the real app over HTTP

T = 600  # seconds; every HTTP call and wait is bounded (generous: the CI machine may be busy)


# -- in-process: positions and interrupt by owner ------------------------------------------------------------


def gated(gate: threading.Event):
    def fn(ctx):
        while not gate.wait(0.01):
            ctx.check()
        return "done"
    return fn


def queued_positions(job) -> list[int]:
    return [e.position for e in job.events(timeout=10) if e.kind is EventKind.QUEUED]


@pytest.mark.unit  # in a module of server tests
def test_positions_count_down_by_one_across_owners():
    runner = JobRunner(max_queued_per_owner=4).start()
    try:
        gates = [threading.Event() for _ in range(9)]
        jobs = [runner.submit(gated(gates[0]), owner="a")]
        wait_for(runner.current, timeout=10, what="the worker to hold a's first job")
        for i in range(1, 9):  # owners interleaved: a b c a b c ...
            jobs.append(runner.submit(gated(gates[i]), owner="abc"[i % 3]))
        assert [runner.position(j) for j in jobs] == list(range(9))
        assert [pos for _, pos in runner.queue()] == list(range(9))

        # an owner's interrupt stops its running job, else its first queued one; never another owner's
        assert not runner.interrupt(owner="nobody") and not runner.skip(owner="b")
        assert runner.interrupt(owner="b")  # b's first queued: jobs[1]
        assert jobs[1].done and jobs[1].status == "cancelled" and not jobs[0].done
        assert runner.interrupt(jobs[4], owner="c") is False  # jobs[4] is b's
        assert runner.interrupt(jobs[5], owner="c")  # one from the middle of the queue
        assert runner.interrupt(owner="a")  # a's running job
        with pytest.raises(Cancelled):
            jobs[0].wait(10)
        for g in gates[2:]:
            g.set()
        for j in jobs[2:5] + jobs[6:]:
            assert j.wait(10) == "done"
    finally:
        runner.stop()

    assert queued_positions(jobs[0]) == [0]  # the worker was idle
    assert queued_positions(jobs[5]) == [5, 4]  # then cancelled
    for i, job in enumerate(jobs[1:], start=1):  # i jobs ahead at submit; each change announced once, down to 1
        if i != 5:
            assert queued_positions(job) == list(range(i, 0, -1)), f"job {i}"


# -- the real server -------------------------------------------------------------------------------------------

CLIENTS = ["c0", "c1", "c2", "c3"]
SEEDS = [7000 + 37 * i for i in range(20)]  # request i comes from CLIENTS[i % 4]
BASE = {"prompt": "a small red house", "negative_prompt": "blurry", "width": 64, "height": 64, "steps": 2,
        "n_iter": 1, "sampler_name": "Euler a"}
CAP = 5  # --max-queued-per-client: each client has 5 of the 20 waiting at once


@pytest.fixture(scope="module")
def server(tiny_store, tmp_path_factory):
    import shutil

    from tests.conftest import Server

    root = tmp_path_factory.mktemp("load")
    shutil.copytree(tiny_store / "tiny-sd15", root / "models" / "Stable-diffusion" / "tiny-sd15")
    with Server(root / "models", root / "outputs", "--api", "--nowebui", "--max-queued-per-client",
                str(CAP)) as s:
        yield s


def call(server, method: str, path: str, client: str, body=None) -> requests.Response:
    return requests.request(method, server.url + path, json=body, headers={"X-Client-Id": client}, timeout=T)


def queue_of(server, client: str) -> dict:
    r = call(server, "GET", "/studio/v1/queue", client)
    assert r.status_code == 200, r.text
    return r.json()


def progress_of(server, client: str) -> dict:
    r = call(server, "GET", "/sdapi/v1/progress", client)
    assert r.status_code == 200, r.text
    return r.json()


def pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


class Poller(threading.Thread):
    """Reads every client's queue listing and progress until stopped; records what each job was told."""

    def __init__(self, server):
        super().__init__(daemon=True)
        self.server, self.stop, self.errors = server, threading.Event(), []
        self.listed: dict[int, list[tuple[str, int]]] = defaultdict(list)  # job id -> [(status, position)]
        self.progress: dict[str, list[tuple[str, int | None]]] = defaultdict(list)  # job -> [queue_position]
        self.lengths: list[int] = []

    def run(self):
        while not self.stop.is_set():
            for client in CLIENTS:
                try:
                    q = queue_of(self.server, client)
                    p = progress_of(self.server, client)
                except Exception as e:  # reported by the test, never swallowed
                    self.errors.append(repr(e))
                    return
                self.lengths.append(q["queue_length"])
                for job in q["jobs"]:
                    self.listed[job["id"]].append((job["status"], job["position"]))
                if p["queue_position"] is not None:
                    self.progress[p["state"]["job"]].append(p["queue_position"])


def test_many_clients_at_once(server):
    # reference: each seed alone, one request at a time
    reference = {}
    for seed in SEEDS:
        r = call(server, "POST", "/sdapi/v1/txt2img", "ref", {**BASE, "seed": seed})
        assert r.status_code == 200, r.text
        reference[seed] = pixels(r.json()["images"][0])
    assert len({ref.tobytes() for ref in reference.values()}) == len(SEEDS), "distinct seeds must differ"
    idle = progress_of(server, "c0")
    assert idle["queue_position"] is None and idle["state"]["job_count"] == 0
    assert call(server, "POST", "/sdapi/v1/interrupt", "c0").json() == {"interrupted": False}

    answers: dict[str, requests.Response] = {}

    def send(key: str, client: str, body: dict) -> threading.Thread:
        t = threading.Thread(target=lambda: answers.update({key: call(server, "POST", "/sdapi/v1/txt2img", client,
                                                                      body)}), daemon=True)
        t.start()
        return t

    # c0's long job holds the device worker while the 20 requests queue up behind it
    threads = [send("blocker", "c0", {**BASE, "seed": 900000, "steps": 10, "n_iter": 100})]
    wait_for(lambda: progress_of(server, "c0")["current_image"], timeout=T, what="c0's long job to run and preview")
    blocker = queue_of(server, "c0")["jobs"][0]
    assert blocker["status"] == "running" and blocker["position"] == 0

    poller = Poller(server)
    poller.start()
    ids = []  # the server's job id of request i, learnt before request i + 1 is sent: arrival order is known
    for i, seed in enumerate(SEEDS):
        client = CLIENTS[i % 4]
        known = {j["id"] for j in queue_of(server, client)["jobs"]}
        threads.append(send(f"r{i}", client, {**BASE, "seed": seed}))
        new = wait_for(lambda: [j for j in queue_of(server, client)["jobs"] if j["id"] not in known],
                       timeout=T, what=f"request {i} to be queued")
        assert len(new) == 1 and new[0]["status"] == "queued" and new[0]["position"] == i + 1, new
        ids.append(new[0]["id"])
    assert ids == sorted(ids) and ids[0] > blocker["id"]

    # everyone sees its own jobs, in order, with the number of jobs ahead; nothing of the others'
    for k, client in enumerate(CLIENTS):
        q = queue_of(server, client)
        assert q["queue_length"] == 21
        mine = [j for j in q["jobs"] if j["status"] == "queued"]
        assert [(j["id"], j["position"]) for j in mine] == [(ids[i], i + 1) for i in range(k, 20, 4)]
    p1 = progress_of(server, "c1")
    assert (p1["queue_position"], p1["textinfo"], p1["progress"]) == (2, "Queued: 2 job(s) ahead", 0)
    assert p1["current_image"] is None and p1["state"]["job"] == f"job {ids[1]}"
    outsider = progress_of(server, "c9")  # no job: the running one, without its preview
    assert outsider["state"]["job"] == f"job {blocker['id']}" and outsider["queue_position"] is None
    assert outsider["current_image"] is None and progress_of(server, "c0")["current_image"]
    assert queue_of(server, "c9") == {"queue_length": 21, "jobs": []}

    # the cap: a 6th waiting job of c2 is refused with a reason; nobody else is affected
    r = call(server, "POST", "/sdapi/v1/txt2img", "c2", {**BASE, "seed": 1})
    assert r.status_code == 429 and r.json()["error"] == "QueueFull" and "waiting" in r.json()["detail"]

    # clients with nothing to stop stop nothing
    assert call(server, "POST", "/sdapi/v1/interrupt", "c9").json() == {"interrupted": False}
    assert call(server, "POST", "/sdapi/v1/skip", "c9").json() == {"skipped": False}
    assert call(server, "POST", "/sdapi/v1/skip", "c1").json() == {"skipped": False}  # queued only
    assert call(server, "DELETE", f"/studio/v1/queue/{ids[2]}", "c1").status_code == 404  # c2's job
    assert queue_of(server, "c9")["queue_length"] == 21

    # c1's interrupt cancels its first queued job, and only that
    assert call(server, "POST", "/sdapi/v1/interrupt", "c1").json() == {"interrupted": True}
    threads[2].join(T)  # request 1's thread
    cancelled = answers["r1"]
    assert cancelled.status_code == 200, cancelled.text
    info = json.loads(cancelled.json()["info"])
    assert cancelled.json()["images"] == [] and info["interrupted"] and info["job_id"] == ids[1]
    order = [i for i in range(20) if i != 1]
    c0 = queue_of(server, "c0")["jobs"]
    assert (c0[0]["id"], c0[0]["status"]) == (blocker["id"], "running")  # c0's running job goes on
    assert not progress_of(server, "c0")["state"]["interrupted"]
    for k, client in enumerate(CLIENTS):
        mine = [(j["id"], j["position"]) for j in queue_of(server, client)["jobs"] if j["status"] == "queued"]
        assert mine == [(ids[i], order.index(i) + 1) for i in order if i % 4 == k]
    # its place freed, c1 sends that seed again: it queues last
    threads.append(send("r1-again", "c1", {**BASE, "seed": SEEDS[1]}))
    again = wait_for(lambda: [j for j in queue_of(server, "c1")["jobs"] if j["id"] > ids[-1]], timeout=T,
                     what="the resent request")
    assert again[0]["position"] == 20
    order.append(1)
    ids.append(again[0]["id"])

    # more requests waiting at once than Starlette's 40 worker threads: every one is queued at once, the queue
    # routes still answer; each of these 9 clients then cancels its 5 queued jobs, one interrupt at a time
    crowd = [f"x{k}" for k in range(9)]
    crowd_threads = [send(f"{client}-{n}", client, {**BASE, "seed": 1}) for n in range(CAP) for client in crowd]
    wait_for(lambda: queue_of(server, "c9")["queue_length"] == 21 + 45, timeout=120, what="45 more requests queued")
    positions = [j["position"] for j in queue_of(server, "x8")["jobs"]]  # arrival order among them: any
    assert len(positions) == CAP and positions == sorted(set(positions)) and 21 <= positions[0] <= positions[-1] < 66
    for client in crowd:
        for _ in range(CAP):
            assert call(server, "POST", "/sdapi/v1/interrupt", client).json() == {"interrupted": True}
        assert queue_of(server, client)["jobs"] == []
    for t in crowd_threads:
        t.join(T)
    for key in [f"{client}-{n}" for client in crowd for n in range(CAP)]:
        assert answers[key].status_code == 200 and answers[key].json()["images"] == [], key
    assert queue_of(server, "c9")["queue_length"] == 21

    # c0 stops its own long job (the images so far are its answer); the 20 then run
    assert call(server, "POST", "/sdapi/v1/interrupt", "c0").json() == {"interrupted": True}
    for t in threads:
        t.join(T)
    poller.stop.set()
    poller.join(T)
    assert not poller.errors, poller.errors

    r = answers["blocker"]
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    n_blocker = len(r.json()["images"])
    assert info["interrupted"] and info["all_seeds"] == list(range(900000, 900000 + n_blocker))

    for i, key in [(i, f"r{i}") for i in range(20) if i != 1] + [(1, "r1-again")]:
        r = answers[key]
        assert r.status_code == 200, f"{key}: {r.status_code} {r.text[:300]}"
        info = json.loads(r.json()["info"])
        assert info["all_seeds"] == [SEEDS[i]] and not info.get("interrupted"), key
        assert len(r.json()["images"]) == 1
        assert np.array_equal(pixels(r.json()["images"][0]), reference[SEEDS[i]]), f"{key}: another seed's image"
    answered = [json.loads(answers[f"r{i}"].json()["info"])["job_id"] for i in order[:-1]]
    answered.append(json.loads(answers["r1-again"].json()["info"])["job_id"])
    assert answered == [ids[i] for i in order[:-1]] + [ids[20]], "each answer comes from its own job"

    # the saved files: references, the long job's images, then the 20 in arrival order, each with its infotext
    files = sorted((p for p in server.outputs_dir.rglob("*.png")), key=lambda p: (p.parent.name, p.name))
    assert len(files) == 20 + n_blocker + 20
    last = files[-20:]
    assert [int(re.match(r"\d{5}-(\d+)\.png", p.name).group(1)) for p in last] == [SEEDS[i] for i in order]
    for p in last:
        seed = p.name.split("-")[1].removesuffix(".png")
        assert f"Seed: {seed}," in Image.open(p).text["parameters"]

    # what the queue told each job while it waited: positions only go down, within the queue
    assert poller.listed and max(poller.lengths) <= 21 + 45
    for job_id, seen in poller.listed.items():
        positions = [pos for _, pos in seen]
        assert all(0 <= pos <= 20 for pos in positions), (job_id, positions)
        assert positions == sorted(positions, reverse=True), f"job {job_id}: {positions}"
        statuses = [s for s, _ in seen]
        assert statuses == sorted(statuses, key=["queued", "running"].index), f"job {job_id}: {statuses}"
    for job, positions in poller.progress.items():
        assert positions == sorted(positions, reverse=True), f"{job}: {positions}"
    assert progress_of(server, "c0")["state"]["job_count"] == 0
