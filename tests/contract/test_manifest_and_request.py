"""The typed contracts: `Manifest` (loaded and checked once, old manifests included) and `ExportRequest`
(every option checked where the request is built, before any export starts)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from retnet_edge.contract.manifest import Manifest
from retnet_edge.contract.quant import QuantConfig
from retnet_edge.contract.request import ExportRequest, export_requests
from retnet_edge.errors import ArtifactError, ConfigError

DATA = Path(__file__).parent / "data"
OLD = DATA / "manifest_main_32f4abd.json"  # written by main at 32f4abd (before the Manifest type), demo onnx int8


def test_a_manifest_from_before_the_type_loads_with_its_fields():
    m = Manifest.from_dict(json.loads(OLD.read_text()), OLD)
    assert (m.target, m.flavor, m.quant_config()) == ("onnx", "standard", QuantConfig("int8", lm_head="int8"))
    assert m.config.n_layers == 6 and m.tokenizer == "tokenizer.json" and m.validated
    assert m.validation_status == "passed" and m.worst_check()["kl"] == max(c["kl"] for c in m.validation["checks"])
    assert set(m.graphs) == {"model.onnx", "model_fused.onnx", "prefill.onnx", "weights.bin"}
    assert m.size_bytes == sum(f["bytes"] for f in json.loads(OLD.read_text())["files"].values())
    again = Manifest.from_dict(m.to_dict())  # what this version writes reads back the same
    assert again == m


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(tokenizer="../../etc/passwd"), "tokenizer"),
    (lambda d: d.update(tokenizer="/etc/passwd"), "tokenizer"),
    (lambda d: d.update(tokenizer="vocab.json"), "not a file listed"),  # a name, but not one of the artifact's
    (lambda d: d.update(graphs=["../model.onnx"]), "graphs"),
    (lambda d: d["files"].update({"../x": {"bytes": 1, "sha256": "0" * 64}}), "plain file name"),
    (lambda d: d.update(options={"flavor": "portable"}), "unknown onnx flavor"),
    (lambda d: d.update(options={"flavor": "x" * 10_000}), "short strings"),
    (lambda d: d.update(validation={"passed": "yes"}), "validation"),
    (lambda d: d.update(validation=[1, 2]), "validation"),
    (lambda d: d["quant"].update(scheme="int3"), "quant"),
    (lambda d: d["quant"].update(extra_field=1), "quant"),
    (lambda d: d.update(quant_fallbacks="layers.0"), "quant_fallbacks"),
    (lambda d: d.pop("config"), "config"),
])
def test_malformed_fields_are_one_artifact_error_naming_the_field(edit, message):
    d = json.loads(OLD.read_text())
    edit(d)
    with pytest.raises(ArtifactError, match=message):
        Manifest.from_dict(d, OLD)


def test_the_flavour_is_the_manifests_and_unlisted_files_are_named(tmp_path):
    """A genai_config.json dropped into a standard artifact changes nothing; `unlisted_files` names it."""
    d = tmp_path / "art"
    d.mkdir()
    (d / "model.onnx").write_bytes(b"x")
    m = Manifest.write(d, target="onnx", config=Manifest.from_dict(json.loads(OLD.read_text())).config,
                       quant=QuantConfig("fp32"), options={"flavor": "standard"})
    (d / "genai_config.json").write_text("{}")
    loaded = Manifest.load(d)
    assert loaded == m and loaded.flavor == "standard" and loaded.unlisted_files(d) == ["genai_config.json"]
    (d / "model.onnx").write_bytes(b"y")
    with pytest.raises(ArtifactError, match="does not match its manifest sha256"):
        Manifest.load(d)
    shutil.rmtree(d / "model.onnx", ignore_errors=True)
    (d / "model.onnx").unlink()
    (d / "model.onnx").mkdir()  # a directory where a file was listed
    with pytest.raises(ArtifactError, match="missing"):
        Manifest.load(d)


def test_a_request_checks_every_option_once(tmp_path):
    r = ExportRequest("demo", "executorch", QuantConfig("int4"), tmp_path / "o")
    assert r.flavor == "runner" and r.options == {"flavor": "runner"} and r.name == "executorch-int4"
    for kwargs, message in [(dict(target="tflite"), "unknown export target"),
                            (dict(target="onnx", flavor="runner"), "not a onnx flavor"),
                            (dict(target="executorch", quant=QuantConfig("int4", prefill_weights="int8")),
                             "not offered by the executorch target"),
                            (dict(target="onnx", flavor="genai", quant=QuantConfig("int4", prefill_weights="int8")),
                             "separate prompt graph"),
                            (dict(target="onnx", steps=2), "--steps"),
                            (dict(target="onnx", state_op="opset27"), "unknown --state-op"),
                            (dict(target="executorch", state_op="standard"), "applies to ONNX"),
                            (dict(target="onnx", flavor="genai", state_op="standard"), "standard flavour")]:
        args = dict(model="demo", target="onnx", quant=QuantConfig("int4"), output=tmp_path / "o") | kwargs
        with pytest.raises(ConfigError, match=message):
            ExportRequest(**args)


def test_a_single_artifact_is_a_bundle_of_one_and_options_go_where_they_apply(tmp_path):
    one = export_requests("demo", tmp_path / "a", ["onnx"], ["int4"], single=True, prefill_weights="int8")
    assert len(one) == 1 and one[0].output == tmp_path / "a" and one[0].quant.prefill_weights == "int8"
    many = export_requests("demo", tmp_path / "b", ["onnx", "executorch"], ["int8", "int4"], single=False,
                           prefill_weights="int8", flavor="io")
    by = {r.name: r for r in many}
    assert [r.output for r in many] == [tmp_path / "b" / n for n in by]
    assert by["onnx-int4"].quant.prefill_weights == "int8" and by["executorch-int4"].quant.prefill_weights == "same"
    ops = {r.name: r.state_op for r in export_requests("demo", tmp_path / "c", ["onnx", "executorch"], ["int8"],
                                                        single=False, state_op="standard")}
    assert ops == {"onnx-int8": "standard", "executorch-int8": "auto"}  # the ONNX artifact's option only
    assert ExportRequest("demo", "onnx", QuantConfig("int8"), tmp_path / "o", state_op="contrib").options == \
        {"flavor": "standard", "state_op": "contrib"}
    with pytest.raises(ConfigError, match="applies to ONNX"):
        export_requests("demo", tmp_path / "d", ["executorch"], ["int8"], single=True, state_op="standard")
    assert by["onnx-int4"].flavor == "standard" and by["executorch-int8"].flavor == "io"
    for args, message in [((["onnx"], ["int8"]), "--no-validate is for a single artifact"),
                          ((["onnx", "onnx"], ["int8"]), "must not repeat"),
                          ((["executorch"], ["int8", "int4"]), "applies to ONNX int4")]:
        kwargs = dict(single=False, validate=args[1] != ["int8"] or args[0] != ["onnx"],
                      prefill_weights="int8" if "applies" in message else "same")
        with pytest.raises(ConfigError, match=message):
            export_requests("demo", tmp_path / "c", *args, **kwargs)
