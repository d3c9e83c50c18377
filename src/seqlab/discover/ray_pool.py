"""The local-search jobs of `seqlab discover` as Ray tasks, across the machines of a Ray
cluster (`--ray auto|local|ADDRESS`; the default stays the local process pool).

Same interface as local.LocalPool (`workers`, `run(jobs)`, `close`): the elite pool,
model training and best.json stay on the driver; only the searches travel. A job is
(starts, seeds, moves, seconds, target[, until]) and is seeded, so a retried job gives the
same result: a task whose worker process or node dies is retried by Ray (`max_retries`),
not lost. A problem travels by name (built-ins, `module:Class`: every node imports it,
so install the same seqlab and your module on every node) or pickled (a problem object).

Not carried over from the process pool: the shared stop event (a job that reaches the
target does not stop the others early; every job still ends at its own time budget).
"""

from __future__ import annotations

from ..errors import SeqlabError
from .search_job import problem_ref, resolve, search

RETRIES = 3
_PROBLEMS: dict = {}  # in each Ray worker process: resolved problems, by reference


def _ray_job(ref, job):
    key = repr(ref) if ref[0] == "spec" else id(ref[1])
    if key not in _PROBLEMS:
        _PROBLEMS[key] = resolve(ref)
    starts, seeds, moves, seconds, target, *until = job
    return search(_PROBLEMS[key], starts, seeds, moves, seconds, target, None, *until)


def _reachable(address: str) -> None:
    """HOST:PORT that nothing answers on fails now, in one line (Ray itself retries for
    minutes, logging as it goes)."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # "auto" and other forms: Ray's own lookup
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as e:
        raise ConnectionError(f"nothing answers at {host}:{port} ({e.strerror or e})") from None


class RayPool:
    def __init__(self, problem, workers: int | None = None, address: str = "auto"):
        try:
            import ray
        except ImportError:
            raise SeqlabError("--ray needs Ray: pip install 'seqlab[ray]'") from None
        self._ray = ray
        self._own = not ray.is_initialized()
        if self._own:
            quiet = {"include_dashboard": False, "log_to_driver": False}
            try:
                if address == "local":  # a private Ray instance on this machine
                    ray.init(num_cpus=workers or None, **quiet)
                else:
                    _reachable(address)
                    ray.init(address=address, **quiet)
            except ConnectionError as e:
                raise SeqlabError(f"--ray {address}: no Ray cluster found ({str(e).splitlines()[0][:160]}); "
                                  f"start one with `ray start --head`, or pass --ray local") from None
        self.workers = max(1, int(workers or ray.cluster_resources().get("CPU", 1)))
        # compile (or load) the numba kernels here, so that workers on this machine read the cache
        problem.local_search(None, seed=0, max_moves=10)
        self._ref = problem_ref(problem)
        self._task = ray.remote(max_retries=RETRIES)(_ray_job)

    def run(self, jobs: list, use_stop: bool = False) -> list:
        """Results in job order (use_stop is ignored: see the module docstring)."""
        ref = self._ray.put(self._ref)
        return self._ray.get([self._task.remote(ref, job) for job in jobs])

    def close(self) -> None:
        if self._own and self._ray.is_initialized():
            self._ray.shutdown()
            self._own = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
