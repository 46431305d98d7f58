"""Choosing the tf.distribute strategy a run trains under.

``auto``        MultiWorkerMirroredStrategy when ``TF_CONFIG`` is set (a cluster), MirroredStrategy
                when more than one GPU is visible, else the default (single-device) strategy.
``default``     the default strategy: one device, no replication.
``mirrored``    MirroredStrategy over all visible GPUs, or over all logical CPU devices when there is
                no GPU (tests split the CPU into two logical devices to exercise this path).
``multiworker`` MultiWorkerMirroredStrategy (reads ``TF_CONFIG``; a single worker without it).

The training loop works the same under all of them: the global batch size comes from the config,
each replica sees ``global / replicas`` samples and its losses are scaled by ``local / global``
batch, so the summed gradients equal those of one device on the whole batch.
"""
from __future__ import annotations

import json
import logging
import os

from w2sr.errors import UserError

log = logging.getLogger(__name__)

STRATEGIES = ("auto", "default", "mirrored", "multiworker")


def make_strategy(kind: str = "auto"):
    """Return a ``tf.distribute.Strategy`` for ``kind`` (see the module docstring)."""
    import tensorflow as tf

    if kind not in STRATEGIES:
        raise UserError(f"unknown train.strategy '{kind}'; choose one of {', '.join(STRATEGIES)}")
    if kind == "auto":
        if os.environ.get("TF_CONFIG"):
            kind = "multiworker"
        elif len(tf.config.list_logical_devices("GPU")) > 1:
            kind = "mirrored"
        else:
            kind = "default"
    if kind == "default":
        strategy = tf.distribute.get_strategy()
    elif kind == "multiworker":
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    else:
        gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
        if gpus:
            strategy = tf.distribute.MirroredStrategy(devices=gpus)
        else:
            cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
            # NCCL is GPU-only; reduce on one device instead.
            strategy = tf.distribute.MirroredStrategy(
                devices=cpus, cross_device_ops=tf.distribute.ReductionToOneDevice()
            )
    log.info(
        "distribution: %s with %d replica(s)", type(strategy).__name__, strategy.num_replicas_in_sync
    )
    return strategy


def is_chief(strategy) -> bool:
    """True for the worker that writes checkpoints and reports (always true off a cluster)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return True
    task_type = getattr(resolver, "task_type", None)
    task_id = getattr(resolver, "task_id", 0) or 0
    if task_type in (None, "chief"):
        return True
    if task_type == "worker" and task_id == 0:
        cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
        return "chief" not in cluster
    return False


def worker_id(strategy) -> str:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return "0"
    return f"{getattr(resolver, 'task_type', 'worker')}{getattr(resolver, 'task_id', 0)}"
