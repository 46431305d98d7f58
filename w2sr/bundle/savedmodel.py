"""Reading a bundle's frozen TensorFlow SavedModel (folder or zip) the way DeepImageJ's engines do:
the TF1 session loader, tag ``serve``, signature ``serving_default`` with the contract's tensor names.
Writing it is the exporter's (``export.savedmodel``).
"""
from __future__ import annotations

import contextlib
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from w2sr.core.contract import INPUT_NAME, OUTPUT_NAME
from w2sr.core.errors import UserError
from w2sr.core.files import scratch_dir

TAG = "serve"


SIGNATURE_KEY = "serving_default"


class _Unzipped:
    """A SavedModel folder: the folder itself, or a zip extracted to a temporary folder."""

    def __init__(self, path: str | Path):
        path = Path(path)
        self._tmp: tempfile.TemporaryDirectory | None = None
        if path.is_dir():
            self.dir = path
        elif zipfile.is_zipfile(path):
            self._tmp = scratch_dir("savedmodel")
            with zipfile.ZipFile(path) as zf:
                zf.extractall(self._tmp.name)
            self.dir = Path(self._tmp.name)
        else:
            raise UserError(f"{path}: not a SavedModel folder or zip")
        if not (self.dir / "saved_model.pb").is_file():
            raise UserError(f"{path}: no saved_model.pb at its top level")

    def cleanup(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def unzip_savedmodel(path: str | Path) -> _Unzipped:
    return _Unzipped(path)


@contextlib.contextmanager
def tf1_session(path: str | Path) -> Iterator[tuple[Any, Any, Any]]:
    """(session, meta graph, signature) of a SavedModel (folder or zip) loaded as DeepImageJ's TF 1.15
    engine loads it: the TF1 loader, tag ``serve``, signature ``serving_default`` with the contract's
    tensor names (UserError otherwise)."""
    import tensorflow as tf

    sm = _Unzipped(path)
    try:
        graph = tf.Graph()
        with graph.as_default(), tf.compat.v1.Session(graph=graph) as sess:
            meta = tf.compat.v1.saved_model.loader.load(sess, [TAG], str(sm.dir))
            sig = meta.signature_def[SIGNATURE_KEY]
            if set(sig.inputs) != {INPUT_NAME} or set(sig.outputs) != {OUTPUT_NAME}:
                raise UserError(f"{path}: signature '{SIGNATURE_KEY}' has inputs {list(sig.inputs)} and "
                                f"outputs {list(sig.outputs)}, expected ['{INPUT_NAME}'] -> ['{OUTPUT_NAME}']")
            yield sess, meta, sig
    finally:
        sm.cleanup()


def load_graph_def(path: str | Path) -> Any:
    """The graph of a SavedModel (folder or zip), loaded with the TF1 loader and tag ``serve``."""
    with tf1_session(path) as (_, meta, _sig):
        return meta.graph_def


def run_tf1(path: str | Path, x: np.ndarray) -> np.ndarray:
    """Run the SavedModel through the TF1 session API, as DeepImageJ's TF 1.15 engine does."""
    with tf1_session(path) as (sess, _, sig):
        return sess.run(sig.outputs[OUTPUT_NAME].name, {sig.inputs[INPUT_NAME].name: np.asarray(x, np.float32)})
