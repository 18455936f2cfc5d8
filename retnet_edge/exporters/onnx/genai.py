"""The onnxruntime-genai flavour of the ONNX target: the graph surgery and the config files genai reads.

onnxruntime-genai (0.18) runs fixed-size recurrent layers: it feeds the whole prompt in one call
(`input_ids` [B, T], `position_ids` 0..T-1), then one token per call, zero-initialises every state and
carries present -> past itself. So the artifact is ONE graph taking any T — our chunk (prefill) graph —
with genai's state names, and, because its runtime binds a conv state beside every recurrent state it
discovers, a dummy float32 [batch, 1, 1] conv state per layer passed through by Identity (odd, but
required: without it loading fails with "Model input was not found: past_key_values.0.conv_state").
BOS: genai creates every tokenizer with add_special_tokens=false, so `Tokenizer.encode` adds no BOS
whatever the files say; tokenizer_config.json's `add_bos_token: true` takes effect once the caller runs
`tokenizer.update_options(add_special_tokens="true")` (docs/genai.md).
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import onnx
from onnx import TensorProto, helper

from ...contract import (
    GENAI_CONFIG_FILE,
    GENAI_CONV_SHAPE,
    GENAI_NAMES,
    GENAI_TOKENIZER_CONFIG_FILE,
    INPUT_IDS,
    LOGITS,
    ONNX_STEP_FILE,
    POSITION_IDS,
    flavor_names,
    io_names,
)
from ...core.config import RetNetConfig

CONTEXT_LENGTH = 1 << 20  # genai bounds max_length by this; a RetNet's state does not grow, so it is only a cap
MAX_LENGTH = 2048  # the search default a user overrides with set_search_options(max_length=...)
BOS_NOTE = ("onnxruntime-genai's Tokenizer.encode adds no BOS unless you call "
            'tokenizer.update_options(add_special_tokens="true") (docs/genai.md); without it the model sees '
            "a different context than in training")


def to_genai_io(model: onnx.ModelProto, n_layers: int) -> None:
    """Rename the chunk graph's state I/O to genai's names and add the dummy conv states (in place)."""
    ours_in, ours_out = io_names(n_layers)
    genai = flavor_names("genai", n_layers)
    rename = dict(zip(ours_in[2:], genai["past_recurrent"])) | dict(zip(ours_out[1:], genai["present_recurrent"]))
    g = model.graph
    for vi in [*g.input, *g.output]:
        vi.name = rename.get(vi.name, vi.name)
    for node in g.node:
        node.input[:] = [rename.get(x, x) for x in node.input]
        node.output[:] = [rename.get(x, x) for x in node.output]
    batch = g.input[0].type.tensor_type.shape.dim[0].dim_param or "batch"
    for i, (past, present) in enumerate(zip(genai["past_conv"], genai["present_conv"])):
        g.input.append(helper.make_tensor_value_info(past, TensorProto.FLOAT, [batch, *GENAI_CONV_SHAPE]))
        g.output.append(helper.make_tensor_value_info(present, TensorProto.FLOAT, [batch, *GENAI_CONV_SHAPE]))
        g.node.append(helper.make_node("Identity", [past], [present], name=f"/model/layers.{i}.conv_state/Identity"))


def _special_tokens(tokenizer: Path | None, cfg: RetNetConfig) -> dict[str, str]:
    """The text of the bos/eos/pad tokens (tokenizer_config.json names them by text, not id)."""
    if tokenizer is None or tokenizer.suffix != ".json":
        return {}
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer))
    names = {"bos_token": cfg.bos_id, "eos_token": cfg.eos_id, "pad_token": cfg.pad_id}
    return {k: t for k, i in names.items() if i is not None and (t := tok.id_to_token(i)) is not None}


def write_genai_files(out: Path, cfg: RetNetConfig, tokenizer: str | None, threads: int = 0,
                      log: Callable[[str], None] = lambda s: None) -> list[str]:
    """genai_config.json (+ tokenizer_config.json when the tokenizer is a tokenizer.json) into `out`."""
    H = cfg.n_heads
    config = {
        "model": {
            "type": "decoder", "vocab_size": cfg.vocab_size, "context_length": CONTEXT_LENGTH,
            # a model without one of these ids (random presets) leaves the key out: genai wants a number
            **{k: v for k, v in (("bos_token_id", cfg.bos_id), ("eos_token_id", cfg.eos_id),
                                 ("pad_token_id", cfg.pad_id)) if v is not None},
            "decoder": {
                "filename": ONNX_STEP_FILE,
                "session_options": {"log_id": "retnet-edge", "provider_options": [],
                                    "intra_op_num_threads": threads},
                "hidden_size": cfg.d_model, "head_size": cfg.d_model // H, "num_attention_heads": H,
                "num_key_value_heads": H, "num_hidden_layers": cfg.n_layers,
                "inputs": {"input_ids": INPUT_IDS, "position_ids": POSITION_IDS,
                           "past_recurrent_names": GENAI_NAMES["past_recurrent_names"],
                           "past_conv_names": GENAI_NAMES["past_conv_names"]},
                "outputs": {"logits": LOGITS, "present_recurrent_names": GENAI_NAMES["present_recurrent_names"],
                            "present_conv_names": GENAI_NAMES["present_conv_names"]},
            },
        },
        "search": {"do_sample": False, "max_length": MAX_LENGTH, "min_length": 0, "num_beams": 1,
                   "num_return_sequences": 1, "past_present_share_buffer": False, "early_stopping": True,
                   "temperature": 1.0, "top_k": 50, "top_p": 1.0, "repetition_penalty": 1.0,
                   "length_penalty": 1.0, "no_repeat_ngram_size": 0, "diversity_penalty": 0.0},
    }
    (out / GENAI_CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    files = [GENAI_CONFIG_FILE]
    tok_path = out / tokenizer if tokenizer else None
    special = _special_tokens(tok_path, cfg)
    if special:  # genai's tokenizer (onnxruntime-extensions) reads tokenizer.json + tokenizer_config.json
        # add_bos_token: our runtime prepends BOS (the demo was trained with it); onnxruntime-extensions adds
        # it when `add_bos_token && add_special_tokens`, and genai 0.18 creates the tokenizer with
        # add_special_tokens=false, so it applies after update_options(add_special_tokens="true") only.
        # Only with a BOS token: without one, extensions prepends id 0 (tried with genai 0.18).
        bos = "bos_token" in special
        source = out / GENAI_TOKENIZER_CONFIG_FILE  # the checkpoint's, copied by the pipeline: keep its chat template
        kept = {k: v for k, v in (json.loads(source.read_text()) if source.is_file() else {}).items()
                if k == "chat_template"}
        (out / GENAI_TOKENIZER_CONFIG_FILE).write_text(json.dumps(
            {"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": bos, **special, **kept}, indent=2) + "\n")
        files.append(GENAI_TOKENIZER_CONFIG_FILE)
        if bos:
            log(f"  note: {BOS_NOTE}")
    return files
