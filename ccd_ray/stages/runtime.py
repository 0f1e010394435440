"""Connect to Ray: the cluster a job was submitted to, or a local instance sized for this
machine; and keep Ray's console output to what a user needs."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

import ray

LOOPBACK = "127.0.0.1"
# Ray Data's logging config for a local instance's workers: Ray's default, console at WARNING
WORKER_DATA_LOGGING = Path(__file__).parents[1] / "configs" / "ray_data_worker_logging.yaml"


def init_ray(address: str | None = None, progress: bool = False) -> None:
    """Join `address` (or RAY_ADDRESS, set for `ray job submit` drivers); otherwise start a local
    instance with more logical CPUs than cores, since an actor pool that holds every CPU
    starves the read tasks feeding it. The local instance is always a new one (address
    "local"): a bare ray.init() would join whatever cluster `ray start` left on the machine,
    and then refuse the num_cpus given here. progress: Ray Data's progress bars (else off).

    The local instance runs the dashboard's API server on loopback, on a port chosen here and
    given to every worker as RAY_API_SERVER_ADDRESS: Ray Train's PlacementGroupCleaner asks
    the State API every second whether the training controller is alive. Without the API
    server each ask fails ("Failed to query Ray Train Controller actor state", once a second
    for every fit); without the address a worker finds the API server by looking for Ray
    instances on the machine, which fails where there are several.

    On the local instance Ray Train also runs lighter (on a cluster both stay Ray's defaults):
    no preemption watcher, which reports a node a cloud provider is about to reclaim, cannot
    happen to this machine, and costs every fit one more actor process to start; and its
    controller polls the workers every 0.5 s instead of 2 s, so a fit returns up to 1.5 s
    sooner after its last epoch (a poll of a local worker costs nothing; a missed one is
    tolerated for RAY_TRAIN_WORKER_HEALTH_CHECK_TIMEOUT_S, 10 minutes).

    Its workers log Ray Data's INFO lines to ray-data.log only, as the driver does
    (quiet_ray_console): Ray Train's ingest runs a Ray Data execution inside an actor, whose
    start, plan and end would otherwise reach the console three lines an epoch
    (WORKER_DATA_LOGGING)."""
    if ray.is_initialized():
        return
    quiet_ray_console(progress)
    address = address or os.environ.get("RAY_ADDRESS")
    if address and address != "local":
        ray.init(address=address)
    else:
        port = _free_port()
        ray.init(address="local", num_cpus=max(4, 2 * (os.cpu_count() or 1)),
                 include_dashboard=True, dashboard_host=LOOPBACK, dashboard_port=port,
                 runtime_env={"env_vars": {
                     "RAY_API_SERVER_ADDRESS": f"http://{LOOPBACK}:{port}",
                     "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
                     "RAY_DATA_LOGGING_CONFIG": str(WORKER_DATA_LOGGING),
                     "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}})


def _free_port() -> int:
    """A port free on loopback now. Ray refuses to start if it is taken by then (an explicit
    dashboard port is never moved to another one)."""
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


def quiet_ray_console(progress: bool) -> None:
    """Ray Data's progress bars off unless asked for (they print hundreds of lines when the
    console is not a terminal), and its INFO lines (a dataset started, its plan, finished)
    to the Python log only, which the jobs copy into the run's log file; its warnings and
    errors stay on the console. Call before Ray starts: local workers read the environment
    variable when they start, the driver's DataContext travels with every dataset."""
    if not progress:
        os.environ["RAY_DATA_DISABLE_PROGRESS_BARS"] = "1"
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = progress
    data_logger = logging.getLogger("ray.data")
    for handler in data_logger.handlers:
        if type(handler).__name__ == "PlainRayHandler":  # Ray Data's console handler
            handler.setLevel(logging.WARNING)
    if not any(isinstance(h, _ToRootHandlers) for h in data_logger.handlers):
        data_logger.addHandler(_ToRootHandlers(logging.INFO))


class _ToRootHandlers(logging.Handler):
    """Hands Ray Data's INFO records to the root logger's handlers (where the jobs' run log
    listens) and to no other: Ray Data's logger does not propagate, and propagating would
    reach the "ray" logger's console handler with every DEBUG record. Its warnings and errors
    are on the console, which the run log copies already."""

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            return
        for handler in logging.getLogger().handlers:
            if record.levelno >= handler.level:
                handler.handle(record)
