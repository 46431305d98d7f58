"""Run a bundle's zipped SavedModel in an old TensorFlow, the way DeepImageJ's engines load it.

Runs inside an engine environment (Python 3.7 / 3.9 / 3.10 with TensorFlow 1.15 / 2.7 / 2.10), so
it is plain Python 3.7 and imports nothing from the w2sr project. The host process
(``export.engines``) hands it a job file (JSON) and reads back a result file (JSON):

job:    {"savedmodel_zip", "input_npy" (already preprocessed, float32 (B,H,W,1)), "out_dir",
         "input_key", "output_key", "tf2_loader": bool, "per_sample": bool, optional "repeats"
         (default 1) and "profile": bool (v1_session only)}
result: {"runtime": "tensorflow", "version", "python", "unzipped": [names at the zip root],
         "peak_rss_mb", "loaders": {"v1_session": {...}, "tf2_load": {...}}}
"per_sample": run the batch one sample at a time (DeepImageJ's tiles: one tile per call), so the
process's peak memory is that of one tile.
each loader entry: {"loaded": bool, "ran": bool, "output_npy", "shape", "load_s", "run_s", "error"},
"run_times_s" (each run; "run_s" is the first) and, with "profile", "profile_s": seconds per run by
op type from one more run traced with RunOptions.FULL_TRACE (summed over ops that may overlap).

Loader "v1_session" is what JDLL's TF1 and TF2 Java engines do (SavedModelBundle.load): a
session, tag "serve", signature "serving_default", tensors looked up by the signature keys.
Loader "tf2_load" is TensorFlow 2's tf.saved_model.load + signatures["serving_default"]; it is
reported for information (DeepImageJ does not use it).
"""
import json
import os
import shutil
import tempfile
import time
import zipfile

import numpy as np

from engine_common import result_header, run_main, short_error, write_result  # beside this script


def unzip_like_deepimagej(zip_path, dest):
    """DeepImageJ unpacks the weights zip into the model folder and loads that folder as the
    SavedModel, so saved_model.pb and variables/ must sit at the zip root."""
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(dest)
        names = sorted(set(n.split("/")[0] for n in zf.namelist()))
    return names


def run_batch(call, x, per_sample):
    """call(x) on the whole batch, or on one sample at a time."""
    if not per_sample:
        return call(x)
    return np.concatenate([np.asarray(call(x[i:i + 1])) for i in range(len(x))])


def traced_op_seconds(v1, sess, graph, fetch, feed):
    """One traced run: seconds by op type (from the step stats' timeline labels, "name = Op(...)")."""
    opts = v1.RunOptions(trace_level=v1.RunOptions.FULL_TRACE)
    meta = v1.RunMetadata()
    sess.run(fetch, feed_dict=feed, options=opts, run_metadata=meta)
    totals = {}
    for dev in meta.step_stats.dev_stats:
        if dev.device.startswith("/host:"):  # the host tracer's copy of the same ops
            continue
        for ns in dev.node_stats:
            label = ns.timeline_label
            if " = " in label:
                op = label.split(" = ", 1)[1].split("(", 1)[0]
            else:
                try:
                    op = graph.get_operation_by_name(ns.node_name.split(":")[0]).type
                except (KeyError, ValueError):
                    op = ns.node_name.split(":")[0]
            totals[op] = totals.get(op, 0.0) + ns.all_end_rel_micros / 1e6
    return totals


def run_v1_session(tf, model_dir, x, input_key, output_key, per_sample=False, repeats=1, profile=False):
    v1 = tf.compat.v1
    entry = {"loaded": False, "ran": False}
    graph = v1.Graph()
    t0 = time.time()
    try:
        with graph.as_default():
            sess = v1.Session(graph=graph)
            meta = v1.saved_model.loader.load(sess, ["serve"], model_dir)
    except Exception as exc:  # noqa: BLE001 - any load failure is the finding we report
        entry["error"] = "load failed: " + short_error(exc)
        entry["load_s"] = time.time() - t0
        return entry, None
    entry["load_s"] = time.time() - t0
    entry["loaded"] = True
    try:
        if "serving_default" not in meta.signature_def:
            raise KeyError("no signature 'serving_default'; the SavedModel has {}".format(
                sorted(meta.signature_def.keys())))
        sig = meta.signature_def["serving_default"]
        for kind, keys, key in (("input", sig.inputs, input_key), ("output", sig.outputs, output_key)):
            if key not in keys:
                raise KeyError("signature 'serving_default' has no {} '{}' (it has {}); DeepImageJ matches "
                               "tensors by the rdf id".format(kind, key, sorted(keys.keys())))
        in_name = sig.inputs[input_key].name
        out_name = sig.outputs[output_key].name
        entry["tensors"] = {"input": in_name, "output": out_name}
        times = []
        for _ in range(max(1, int(repeats))):
            t0 = time.time()
            y = run_batch(lambda b: sess.run(out_name, feed_dict={in_name: b}), x, per_sample)
            times.append(time.time() - t0)
        entry["run_s"], entry["run_times_s"] = times[0], times
        entry["ran"] = True
        if profile:
            entry["profile_s"] = traced_op_seconds(v1, sess, graph, out_name, {in_name: x[:1]})
        return entry, np.asarray(y, dtype=np.float32)
    except Exception as exc:  # noqa: BLE001
        entry["error"] = "run failed: " + short_error(exc)
        return entry, None
    finally:
        sess.close()


def run_tf2_load(tf, model_dir, x, input_key, output_key, per_sample=False):
    entry = {"loaded": False, "ran": False}
    t0 = time.time()
    try:
        obj = tf.saved_model.load(model_dir)
        fn = obj.signatures["serving_default"]
    except Exception as exc:  # noqa: BLE001
        entry["error"] = "load failed: " + short_error(exc)
        entry["load_s"] = time.time() - t0
        return entry, None
    entry["load_s"] = time.time() - t0
    entry["loaded"] = True
    try:
        t0 = time.time()
        def call(b):
            result = fn(**{input_key: tf.constant(b)})
            if output_key not in result:
                raise KeyError("signature 'serving_default' returned {} without '{}'".format(
                    sorted(result.keys()), output_key))
            return result[output_key].numpy()

        y = run_batch(call, x, per_sample)
        entry["run_s"] = time.time() - t0
        entry["ran"] = True
        return entry, np.asarray(y, dtype=np.float32)
    except Exception as exc:  # noqa: BLE001
        entry["error"] = "run failed: " + short_error(exc)
        return entry, None


def main(job_path, result_path):
    with open(job_path) as fh:
        job = json.load(fh)
    t_import = time.time()
    import tensorflow as tf  # noqa: E402 - timed on purpose
    result = result_header("tensorflow", tf.__version__, time.time() - t_import, np.__version__)
    x = np.load(job["input_npy"]).astype(np.float32)
    workdir = tempfile.mkdtemp(prefix="w2sr-engine-")
    try:
        model_dir = os.path.join(workdir, "model")
        os.makedirs(model_dir)
        result["unzipped"] = unzip_like_deepimagej(job["savedmodel_zip"], model_dir)
        loaders = [("v1_session", lambda *a: run_v1_session(*a, repeats=job.get("repeats", 1),
                                                             profile=job.get("profile", False)))]
        if job.get("tf2_loader") and int(tf.__version__.split(".")[0]) >= 2:
            loaders.append(("tf2_load", run_tf2_load))
        for name, fn in loaders:
            try:
                entry, y = fn(tf, model_dir, x, job["input_key"], job["output_key"], job.get("per_sample", False))
            except Exception as exc:  # noqa: BLE001 - never lose the other loader's result
                entry, y = {"loaded": False, "ran": False, "error": short_error(exc)}, None
            if y is not None:
                out = os.path.join(job["out_dir"], name + ".npy")
                np.save(out, y)
                entry["output_npy"] = out
                entry["shape"] = list(y.shape)
            result["loaders"][name] = entry
            print("[engine] {} {}: loaded={} ran={} {}".format(
                "tensorflow", tf.__version__, entry["loaded"], entry["ran"], entry.get("error", "")))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return write_result(result, result_path)


if __name__ == "__main__":
    run_main(main)
