"""Discovery's local searches as Ray tasks (a local Ray instance with 2 CPUs): the same
optimum as the process pool, and a worker killed mid-job costs nothing (the job is retried
with its seed, so the result is the one it would have given)."""

import os

import pytest

from seqlab.discover.local import run_local
from seqlab.discover.problems import get_problem

ray = pytest.importorskip("ray")

KILLER = '''
import os
from pathlib import Path

from seqlab.discover.problems.golomb import Golomb


class DiesOnce(Golomb):
    """Golomb rulers, but the first search anywhere kills its own worker process."""
    name = "dies-once"

    def local_search(self, starts, seed=0, max_moves=None, **kw):
        marker = Path(os.environ["SEQLAB_TEST_MARKER"])
        if starts is not None and not marker.exists():
            marker.write_text(str(os.getpid()))
            os._exit(1)
        return super().local_search(starts, seed=seed, max_moves=max_moves, **kw)
'''


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    d = tmp_path_factory.mktemp("ray")
    (d / "killer.py").write_text(KILLER)
    os.environ["SEQLAB_TEST_MARKER"] = str(d / "killed")
    os.environ["PYTHONPATH"] = f"{d}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"  # the workers import it
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield d
    ray.shutdown()


def test_ray_finds_what_the_process_pool_finds_and_survives_a_killed_worker(local_ray, monkeypatch):
    p = get_problem("golomb", 7)
    run = dict(seed=5, moves=20_000, rounds=3, jobs_per_round=4)
    pool = run_local(p, workers=2, **run)
    on_ray = run_local(p, ray="auto", **run)  # the instance the fixture started
    assert on_ray.scores == pool.scores and on_ray.moves == pool.moves > 0
    assert [p.key(c) for c in on_ray.best] == [p.key(c) for c in pool.best]

    monkeypatch.syspath_prepend(str(local_ray))
    dies = get_problem("killer:DiesOnce", 7)
    survived = run_local(dies, ray="auto", **run)
    assert (local_ray / "killed").exists()  # a worker did die mid-job
    assert survived.scores == pool.scores and survived.moves == pool.moves  # ... and its job was rerun
