"""Print, as JSON, the device this machine trains on and what compute dtype "auto" means there.

Run as a child process (`python -m worker.device`) so that the worker's main process, which forks
Celery's pool, never starts torch itself.
"""

from __future__ import annotations

import json

from worker.training.export import describe_device
from worker.training.model import dtype_name, pick_device, resolve_compute_dtype


def main() -> None:
    device = pick_device()
    print(
        json.dumps(
            {
                "device": describe_device(device),
                "compute_dtype": dtype_name(resolve_compute_dtype("auto", device)),
            }
        )
    )


if __name__ == "__main__":
    main()
