"""Connect to Ray: the cluster a job was submitted to, or a local instance sized for this
machine."""

from __future__ import annotations

import os

import ray


def init_ray(address: str | None = None) -> None:
    """Join `address` (or RAY_ADDRESS, set for `ray job submit` drivers); otherwise start a local
    instance with more logical CPUs than cores, since an actor pool that holds every CPU
    starves the read tasks feeding it. The local instance is always a new one (address
    "local"): a bare ray.init() would join whatever cluster `ray start` left on the machine,
    and then refuse the num_cpus given here."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address and address != "local":
        ray.init(address=address)
    else:
        ray.init(address="local", num_cpus=max(4, 2 * (os.cpu_count() or 1)),
                 include_dashboard=False)
