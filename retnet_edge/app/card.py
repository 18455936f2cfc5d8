"""Model cards: what a trained model is, from what data, with what result."""
from __future__ import annotations

import json
from pathlib import Path


def write_model_card(model_dir: str | Path, summary: dict, corpus: str | Path, extra: str = "") -> Path:
    """Write README.md (the model card) into a trained model's directory."""
    d = Path(model_dir)
    cfg = json.loads((d / "config.json").read_text())
    source = Path(corpus).with_name("SOURCE.txt")
    data = source.read_text().strip() if source.exists() else f"text file {Path(corpus).name}"
    hist = summary["history"]
    curve = "\n".join(f"| {h['step']} | {h['train_loss']} | {h['val_loss']} |" for h in hist[:: max(1, len(hist) // 10)])
    text = f"""# RetNet model card

- **Architecture**: RetNet (arXiv 2307.08621), {cfg['n_layers']} layers, d_model {cfg['d_model']},
  {cfg['n_heads']} heads, value_dim {cfg['value_dim']}, ffn {cfg['ffn_dim']} (GLU, {cfg['activation']}),
  vocab {cfg['vocab_size']}, rotary `{cfg['rotary']}` — **{summary['parameters']:,} parameters**.
- **Data**: {data}
- **License**: the weights are released under the project's MIT license; the training text is public domain.
- **Training**: {summary['steps']} steps of {summary['train_config']['batch_size']} x {summary['train_config']['seq_len']}
  tokens ({summary['tokens_trained']:,} tokens seen; {summary['train_tokens']:,} distinct training tokens),
  AdamW lr {summary['train_config']['lr']} warmup + cosine, dropout {summary['train_config']['dropout']},
  on {summary['device']} with torch {summary['torch']}. Kept: the step with the best validation loss.
- **Final losses**: train {hist[-1]['train_loss']}, validation {hist[-1]['val_loss']} (best {summary['best_val_loss']}).

| step | train loss | val loss |
|---|---|---|
{curve}
{extra}"""
    (d / "README.md").write_text(text)
    return d / "README.md"
