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

from w2sr.core.errors import UserError

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


def _tf_config() -> dict:
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return {}
    try:
        conf = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise UserError(f"TF_CONFIG is not valid JSON ({exc})") from None
    if not isinstance(conf, dict):
        raise UserError("TF_CONFIG must be a JSON object with 'cluster' and 'task'")
    return conf


def _is_chief_task(task_type, task_id, cluster: dict) -> bool:
    """TF's rule: the "chief" task, or worker 0 when the cluster has no chief."""
    if task_type in (None, "chief"):
        return True
    return task_type == "worker" and int(task_id or 0) == 0 and "chief" not in cluster


def will_be_chief(kind: str = "auto") -> bool:
    """``is_chief(make_strategy(kind))``, answered from ``TF_CONFIG`` alone, before TensorFlow starts.

    The run folder is prepared before the strategy exists (MultiWorkerMirroredStrategy must be
    created before any other TF work), and only the chief may write into it.
    """
    if kind == "multiworker" or (kind == "auto" and os.environ.get("TF_CONFIG")):
        conf = _tf_config()
        task = conf.get("task") or {}
        return _is_chief_task(task.get("type"), task.get("index", 0), conf.get("cluster") or {})
    return True


def is_chief(strategy) -> bool:
    """True for the worker that writes checkpoints and reports (always true off a cluster)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return True
    return _is_chief_task(getattr(resolver, "task_type", None), getattr(resolver, "task_id", 0),
                          _tf_config().get("cluster") or {})


def worker_id(strategy) -> str:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return "0"
    return f"{getattr(resolver, 'task_type', 'worker')}{getattr(resolver, 'task_id', 0)}"
