"""Run a bundle's ONNX file in an old ONNX Runtime, feeding by position as JDLL does.

Runs inside the engine environment (Python 3.10, onnxruntime 1.13.1): plain Python 3.7-compatible
code that imports nothing from the w2sr project. Same job/result files as run_savedmodel.py:

job:    {"onnx", "input_npy" (already preprocessed, float32 (B,H,W,1)), "out_dir", "per_sample": bool,
         optional "threads" (default 1; null: ONNX Runtime's default, which is what JDLL's plain
         SessionOptions get), "repeats" (default 1), "profile": bool}
result: {"runtime": "onnxruntime", "version", "python", "peak_rss_mb", "loaders": {"ort_session": {...}}}
each run's seconds in "run_times_s" ("run_s": the first); with "profile", "profile_s": seconds per
run by operator type, from ONNX Runtime's own profiler.
"""
import json
import os
import time

import numpy as np

from engine_common import result_header, run_main, short_error, write_result  # beside this script


def op_seconds(profile_json, runs):
    """Seconds per run by operator type from an ONNX Runtime profile (its "Node" events)."""
    with open(profile_json) as fh:
        events = json.load(fh)
    totals = {}
    for ev in events:
        if ev.get("cat") == "Node" and ev.get("name", "").endswith("_kernel_time"):
            op = ev.get("args", {}).get("op_name", "?")
            totals[op] = totals.get(op, 0.0) + ev.get("dur", 0) / 1e6 / runs
    return totals


def main(job_path, result_path):
    with open(job_path) as fh:
        job = json.load(fh)
    t_import = time.time()
    import onnxruntime as ort  # noqa: E402
    result = result_header("onnxruntime", ort.__version__, time.time() - t_import, np.__version__)
    x = np.load(job["input_npy"]).astype(np.float32)
    entry = {"loaded": False, "ran": False}
    t0 = time.time()
    try:
        opts = ort.SessionOptions()
        threads = job.get("threads", 1)
        if threads is not None:
            opts.intra_op_num_threads = int(threads)
        if job.get("profile"):
            opts.enable_profiling = True
            opts.profile_file_prefix = os.path.join(job["out_dir"], "ort_profile")
        sess = ort.InferenceSession(job["onnx"], sess_options=opts, providers=["CPUExecutionProvider"])
        entry["load_s"] = time.time() - t0
        entry["loaded"] = True
        inputs, outputs = sess.get_inputs(), sess.get_outputs()
        entry["tensors"] = {"input": inputs[0].name, "output": outputs[0].name,
                            "input_shape": [str(d) for d in inputs[0].shape]}
        t0 = time.time()
        # by position: the first graph input gets the (only) rdf input, the first output is read
        def call(b):
            return sess.run([outputs[0].name], {inputs[0].name: b})[0]

        times = []
        for _ in range(max(1, int(job.get("repeats", 1)))):
            t0 = time.time()
            if job.get("per_sample"):  # DeepImageJ's tiles: one per call
                y = np.concatenate([call(x[i:i + 1]) for i in range(len(x))])
            else:
                y = call(x)
            times.append(time.time() - t0)
        entry["run_s"], entry["run_times_s"] = times[0], times
        if job.get("profile"):
            entry["profile_s"] = op_seconds(sess.end_profiling(), len(times))
        entry["ran"] = True
        out = os.path.join(job["out_dir"], "ort_session.npy")
        np.save(out, np.asarray(y, dtype=np.float32))
        entry["output_npy"] = out
        entry["shape"] = list(y.shape)
    except Exception as exc:  # noqa: BLE001 - the failure is what we report
        entry["error"] = ("run failed: " if entry["loaded"] else "load failed: ") + short_error(exc)
        entry.setdefault("load_s", time.time() - t0)
    result["loaders"]["ort_session"] = entry
    print("[engine] onnxruntime {}: loaded={} ran={} {}".format(
        ort.__version__, entry["loaded"], entry["ran"], entry.get("error", "")))
    return write_result(result, result_path)


if __name__ == "__main__":
    run_main(main)
