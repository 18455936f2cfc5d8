"""The onnxruntime-genai flavour: onnxruntime-genai's own generator runs our export and agrees with our runner."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime_genai as og
import pytest
from click.testing import CliRunner

from retnet_edge.base.tokenizer import load_tokenizer
from retnet_edge.cli import main
from retnet_edge.contract import GENAI_CONFIG_FILE, flavor_names
from retnet_edge.contract.quant import QuantConfig
from retnet_edge.runtimes import load_runner
from retnet_edge.runtimes.generate import SamplingConfig, generate_ids

PROMPT, NEW = "And God said", 24


@pytest.fixture(scope="module")
def genai_export(tmp_path_factory):
    from retnet_edge.exporters import export_model

    cache = {}

    def export(scheme: str):
        if scheme not in cache:
            out = tmp_path_factory.mktemp(f"genai-{scheme}") / "art"
            cache[scheme] = export_model("demo", "onnx", QuantConfig(scheme), out, steps=32,
                                         options={"flavor": "genai"}).path
        return cache[scheme]

    return export


def _genai_greedy(path, ids: list[int]) -> list[int]:
    model = og.Model(str(path))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + NEW, do_sample=False)
    gen = og.Generator(model, params)
    gen.append_tokens(np.array(ids, dtype=np.int32))
    out = []
    while not gen.is_done():
        gen.generate_next_token()
        out.append(int(gen.get_next_tokens()[0]))
    return out


@pytest.mark.parametrize("scheme", ["fp32", "int4"])
def test_genai_generator_matches_our_runner(genai_export, scheme):
    path = genai_export(scheme)
    ours = load_tokenizer(path)
    ids = ours.encode(PROMPT, add_bos=True)
    theirs = og.Tokenizer(og.Model(str(path)))
    # with genai's default options (no special tokens added), writing the BOS text is the other way to get it
    assert [int(i) for i in theirs.encode("<bos>" + PROMPT)] == ids
    expected = list(generate_ids(load_runner(path), ids, NEW, SamplingConfig(temperature=0), eos_id=None))
    got = _genai_greedy(path, ids)
    assert got == expected[:len(got)] and len(got) >= NEW - 1, (got, expected)
    assert theirs.decode(np.array(got, dtype=np.int32)) == ours.decode(expected[:len(got)])


def test_genai_tokenizer_adds_bos_when_asked(genai_export):
    """genai encodes BOS first once add_special_tokens is on (tokenizer_config.json asks for it), and its greedy
    text is `retnet-edge generate --temperature 0`'s; with genai's default it adds none (docs/genai.md)."""
    path = genai_export("int4")
    ours = load_tokenizer(path)
    theirs = og.Tokenizer(og.Model(str(path)))
    # genai 0.18 creates its tokenizer with add_special_tokens=false: if this starts failing, genai changed
    # its default and docs/genai.md's BOS paragraph (and example) must change with it
    assert [int(i) for i in theirs.encode(PROMPT)] == ours.encode(PROMPT)
    theirs.update_options(add_special_tokens="true")
    ids = [int(i) for i in theirs.encode(PROMPT)]
    assert ids[0] == ours.bos_id == 1 and ids == ours.encode(PROMPT, add_bos=True)
    n = 12
    got = _genai_greedy(path, ids)[:n]
    res = CliRunner().invoke(main, ["generate", str(path), PROMPT, "-n", str(n), "--temperature", "0", "--no-stream"])
    assert res.exit_code == 0, res.output
    assert res.stdout.rstrip("\n") == theirs.decode(np.array(ids + got, dtype=np.int32))


def test_genai_bos_flag_follows_the_tokenizer(genai_export, tmp_path):
    """add_bos_token only with a BOS token (without one, extensions prepends id 0), and the export notes it."""
    import shutil
    from dataclasses import replace

    from retnet_edge.core.config import RetNetConfig
    from retnet_edge.exporters.onnx.genai import BOS_NOTE, write_genai_files

    path = genai_export("fp32")
    cfg = RetNetConfig.from_dict(json.loads((path / "manifest.json").read_text())["config"])
    shutil.copy(path / "tokenizer.json", tmp_path / "tokenizer.json")
    for bos_id, flag in [(cfg.bos_id, True), (None, False)]:
        notes = []
        write_genai_files(tmp_path, replace(cfg, bos_id=bos_id), "tokenizer.json", log=notes.append)
        tok_cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
        assert tok_cfg["add_bos_token"] is flag and ("bos_token" in tok_cfg) is flag
        assert any(BOS_NOTE in n for n in notes) is flag


def test_genai_graph_io_and_config(genai_export):
    path = genai_export("fp32")
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["options"] == {"flavor": "genai"} and manifest["validation"]["passed"]
    assert set(manifest["files"]) == {"model.onnx", "weights.bin", "genai_config.json", "tokenizer.json",
                                      "tokenizer_config.json"}
    g = onnx.load(str(path / "model.onnx"), load_external_data=False).graph
    n = manifest["config"]["n_layers"]
    names = flavor_names("genai", n)
    assert [i.name for i in g.input] == ["input_ids", "position_ids", *names["past_recurrent"], *names["past_conv"]]
    assert [o.name for o in g.output] == ["logits", *names["present_recurrent"], *names["present_conv"]]
    for vi in [*g.input[2:], *g.output[1:]]:  # every state axis but the batch is a fixed number (genai needs it)
        dims = vi.type.tensor_type.shape.dim
        assert dims[0].dim_param and all(d.dim_value > 0 for d in dims[1:]), vi.name
    cfg = json.loads((path / GENAI_CONFIG_FILE).read_text())["model"]
    assert cfg["type"] == "decoder" and cfg["decoder"]["filename"] == "model.onnx"
    assert cfg["decoder"]["inputs"]["past_recurrent_names"] % 3 == "past_key_values.3.recurrent_state"
    assert (cfg["bos_token_id"], cfg["eos_token_id"]) == (1, 2)
    tok_cfg = json.loads((path / "tokenizer_config.json").read_text())
    assert tok_cfg["add_bos_token"] is True and tok_cfg["bos_token"] == "<bos>"


def test_genai_runs_through_our_commands(genai_export):
    path = str(genai_export("int4"))
    res = CliRunner().invoke(main, ["eval", path, "--max-tokens", "400", "--json"])
    assert res.exit_code == 0, res.output
    assert 10 < json.loads(res.stdout)["perplexity"] < 60


def test_flavor_must_belong_to_the_target(tmp_path):
    res = CliRunner().invoke(main, ["export", "demo", "--target", "onnx", "--flavor", "runner", "-o", str(tmp_path / "x")])
    assert res.exit_code == 1 and "is not a flavor of onnx" in res.stderr and not (tmp_path / "x").exists()
    res = CliRunner().invoke(main, ["export", "demo", "--target", "executorch", "--flavor", "genai",
                                    "-o", str(tmp_path / "y")])
    assert res.exit_code == 1 and "expected one of runner, io" in res.stderr


def test_docs_example_runs(genai_export, capsys):
    """docs/genai.md's ten-line example, run as written against an int4 export."""
    from pathlib import Path

    doc = (Path(__file__).parents[2] / "docs" / "genai.md").read_text()
    code = doc.split("```python\n", 1)[1].split("```", 1)[0]
    assert len(code.strip().splitlines()) <= 12 and '"out/demo-genai-int4"' in code
    exec(compile(code.replace("out/demo-genai-int4", str(genai_export("int4"))), "docs/genai.md", "exec"), {})
    text = capsys.readouterr().out
    assert text.startswith("And God said") and len(text.split()) > 20
