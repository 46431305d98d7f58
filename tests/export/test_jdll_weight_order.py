"""Which weights DeepImageJ 3.1 runs is decided by a Java HashMap, not by the rdf's order: the
reproduction in ``w2sr.bundle.jdll.weight_order`` checked against a real JVM's HashMap with the keys
JDLL 0.6.1's ``ModelWeight.build`` makes, and what it means for this project's bundle."""
from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from w2sr.bundle import jdll
from w2sr.core.contract import DEEPIMAGEJ_FIRST_WEIGHTS

VERSIONS = ["1.15", "1.15.0", "1.15.1", "1.14", "2.7", "2.7.0", "2.7.4", "2.10", "2.10.1", "2.11", "2.11.0", "2.12"]

JAVA = """
import java.util.*;
public class Order {
  public static void main(String[] args) {
    // args: pairs of (key, format) in rdf order, as ModelWeight.build puts them
    HashMap<String, String> m = new HashMap<String, String>();
    for (int i = 0; i < args.length; i += 2) m.put(args[i], args[i + 1]);
    System.out.println(String.join(",", m.values()));
  }
}
"""


@pytest.fixture(scope="module")
def java_order(tmp_path_factory):
    if not (shutil.which("javac") and shutil.which("java")):
        pytest.skip("no JDK here (javac): the real HashMap cannot be asked")
    folder = tmp_path_factory.mktemp("java")
    (folder / "Order.java").write_text(JAVA)
    subprocess.run(["javac", "Order.java"], cwd=folder, check=True, capture_output=True)

    def run(pairs: list[tuple[str, str]]) -> list[str]:
        args = [x for pair in pairs for x in pair]
        out = subprocess.run(["java", "-cp", str(folder), "Order", *args], check=True, capture_output=True, text=True)
        return out.stdout.strip().split(",")

    return run


@pytest.mark.parametrize("tf_first_in_rdf", [True, False])
def test_weight_order_is_a_real_java_hashmap_order(java_order, tf_first_in_rdf):
    for version in VERSIONS:
        entries = {"tensorflow_saved_model_bundle": {"tensorflow_version": version}, "onnx": {"opset_version": 17}}
        if not tf_first_in_rdf:
            entries = dict(reversed(list(entries.items())))
        keys = [(f"tensorflow_saved_model_bundle_v{version}" if f.startswith("tensorflow") else "onnx_v17", f)
                for f in entries]
        assert jdll.weight_order({"weights": entries}) == java_order(keys), version


def test_versions_are_read_as_jdll_reads_them():
    assert jdll.java_string_hash("onnx_v17") == -2012417082
    assert jdll._training_version(2.10, None) == "2.1"  # YAML's unquoted 2.10 is a float
    assert jdll._training_version("1.15.0+nv", None) == "1.15.0" and jdll._training_version("2.0cu118", None) == "2.0"
    assert jdll.weight_order({"weights": {"onnx": {}, "tensorflow_saved_model_bundle": {}}}) == \
        jdll.weight_order({"weights": {"onnx": {"opset_version": 17}, "tensorflow_saved_model_bundle": {}}})


def test_the_bundle_declares_the_weights_deepimagej_should_run_first(exported_bundle):
    doc = yaml.safe_load((exported_bundle / "rdf.yaml").read_text())
    declared = doc["weights"]["tensorflow_saved_model_bundle"]["tensorflow_version"]
    assert isinstance(declared, str)  # quoted: an unquoted 2.10 would be read as 2.1
    order = jdll.weight_order(doc)
    assert order[0] == DEEPIMAGEJ_FIRST_WEIGHTS, (declared, order)
