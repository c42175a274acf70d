"""Process set-up for the entry points, and gunicorn's app factory (the Procfile's
``gunicorn 'app.wsgi:create()'``).

Environment and logging belong to whoever starts the process, so they are set here and by
``python -m app``, never when a module is imported or an app is built: a notebook that imports
:mod:`app.notebook`, or a test that builds ``create_app()``, keeps its own hub access and logging.
"""

from __future__ import annotations

import logging
import os
import sys

from flask import Flask

from app import create_app
from app.cache import map_large_blocks

# Served models load from local files only (a hub id loads when its weights are already cached),
# and transformers' advice to developers is noise in a server's log. Torch's OpenMP threads sleep
# when they wait instead of spinning: a server shares its cores (concurrent requests, a browser
# on the same machine), and spinning threads that wait for a busy core made a 2-thread torch op
# 5x slower than one thread (SmolLM2's rollout maps at 4096 tokens under load: 6.8 s spinning,
# 1.2 s passive, 1.2 s on one thread). Read when huggingface_hub, transformers and torch are
# imported, so they must be set before any model code loads.
MODEL_ENVIRONMENT = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def prepare_models() -> None:
    """Set the model environment (values already in the environment win) and large allocations
    that go back to the kernel when freed (app.cache.map_large_blocks): what a process that runs
    models needs before it imports them (the entry points, and the benchmarks, which must
    measure what the server does)."""
    for name, value in MODEL_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    map_large_blocks()


# How long a thread runs before another that waits for the interpreter gets it (Python's default
# is 5 ms). A request gives the interpreter up at each socket write and lock, and took it back
# only after the switch interval whenever another thread was busy: a cached answer behind a
# flooding client waited 5 ms several times over (p50 29 ms at 5 ms, 14 ms at 0.5 ms).
SWITCH_INTERVAL_SECONDS = 0.0005


def prepare_process() -> None:
    """:func:`prepare_models`, a short switch interval for a server's threads, and log INFO to
    stderr."""
    prepare_models()
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)


def create() -> Flask:
    """The app as gunicorn serves it: the process prepared first, then :func:`app.create_app`."""
    prepare_process()
    return create_app()
