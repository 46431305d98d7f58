"""The bundle contract: the names and numbers every part that writes or reads a bundle shares (the
exporter, the rdf, validation, the engine check, prediction, the tests), and the one definition of
"the same output".

The BioImage.IO model zoo accepts a reproduced output when every pixel satisfies
``|a - b| <= ATOL + RTOL * |b|`` (``b`` the stored test output); the rdf writes these numbers into
``config.bioimageio.reproducibility_tolerance``. NaN or Inf anywhere fails.
"""
from __future__ import annotations

import numpy as np

#: output side / input side
SCALE = 2
#: the network's tensor names (SavedModel signature, ONNX graph, rdf)
INPUT_NAME = "input"
OUTPUT_NAME = "output"
#: ONNX opset written (what DeepImageJ 3.1's ONNX Runtime 1.13 reads)
ONNX_OPSET = 17
#: the TensorFlow version the rdf declares for the SavedModel (DeepImageJ 2.1's engine)
TENSORFLOW_VERSION = "1.15"
#: the weights DeepImageJ 3.1 runs when the engines of both formats are installed: JDLL 0.6.1 tries the
#: rdf's weights in a Java HashMap's order, which the declared versions decide (``w2sr.bundle.jdll.weight_order``)
DEEPIMAGEJ_FIRST_WEIGHTS = "tensorflow_saved_model_bundle"
#: ``w2sr predict``'s default tile side (input px): the full model's peak memory for one tile stays under 4 GB
DEFAULT_TILE = 512
#: the part of each DeepImageJ tile that is kept (input px): the tile is this + 2 x halo, so a 512 x 512
#: image is one tile (the real plugin: full model 121 s instead of 463 s with a 512 tile, same pixels).
#: Run directly (GUI, any macro but ours), JDLL 0.6.1 shifts odd sides below this by one pixel and
#: refuses sides below a third of the tile (``w2sr.bundle.jdll.exposed_sides``; the Fiji macro pads them).
#: A smaller tile would expose fewer sides, but the test tensors are one tile, and on a small one
#: bioimageio.core's interpolated percentiles miss the stored output (the demo at 88 px: 24 % of
#: pixels, max 0.0285), so ``bioimageio test rdf.yaml`` fails (docs/consumers.md)
DEEPIMAGEJ_SMALLEST_SIDE = 512

#: the bundle's files
RDF = "rdf.yaml"
SAVEDMODEL_ZIP = "tf_saved_model.zip"
ONNX_WEIGHTS = "weights.onnx"
TEST_INPUT = "test_input.npy"
TEST_OUTPUT = "test_output.npy"
#: the zoo package's own test tensors (a larger window: its sizes are free, and bioimageio.core's
#: interpolated percentiles differ more from JDLL's on few pixels)
ZOO_TEST_INPUT = "zoo_test_input.npy"
ZOO_TEST_OUTPUT = "zoo_test_output.npy"
GENERATOR = "generator.keras"
PRE_MACRO = "preprocessing.ijm"    # the normalisation for DeepImageJ 2.1
POST_MACRO = "postprocessing.ijm"



def deepimagej_tile(halo: int) -> int:
    """DeepImageJ's tile (the rdf's fixed input side, step 0) for a graph with ``halo`` px of context:
    :data:`DEEPIMAGEJ_SMALLEST_SIDE` kept + the halo each side; no side from there up is shifted."""
    return DEEPIMAGEJ_SMALLEST_SIDE + 2 * int(halo)


#: the zoo's per-pixel tolerance for reproducing test outputs: |a - b| <= ATOL + RTOL * |b|
ATOL = 1.5e-4
RTOL = 1e-4
#: the rule as people read it (help texts, reports); tests/export/test_engines.py checks it against the numbers
RULE = "|a-b| <= 1.5e-4 + 1e-4|b|"


def outside_tolerance(actual: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """Boolean mask of the pixels that break the zoo rule (NaN and Inf break it)."""
    a = np.asarray(actual, np.float64)
    b = np.asarray(expected, np.float64)
    return ~(np.abs(a - b) <= ATOL + RTOL * np.abs(b))


def zoo_close(actual: np.ndarray, expected: np.ndarray) -> tuple[float, bool, int]:
    """(max |a-b| (inf when not finite), every pixel within the rule, number of pixels outside it)."""
    a = np.asarray(actual, np.float64)
    b = np.asarray(expected, np.float64)
    if a.shape != b.shape:
        return float("inf"), False, int(max(a.size, b.size))
    diff = np.abs(a - b)
    bad = outside_tolerance(a, b)
    max_diff = float(np.max(diff)) if diff.size and np.isfinite(diff).all() else (0.0 if not diff.size else float("inf"))
    return max_diff, not bool(bad.any()), int(bad.sum())
