"""What the CLI drives, above every stage: the commands and the jobs that span stages.

Owns: `commands/` (the click commands, one module per family; `retnet_edge.cli` groups them), `cli_utils`
(errors → one line and an exit code, output helpers), `bundle` (the main job: every target × quant
exported, gated, scored, benched, reported), `report` (report.md and the table), `inspection` (what
`inspect` shows), `quality` (perplexity / KL of artifacts), `card` (model cards), `train` (the demo's
trainer), and the session and evaluation apps (chat, serve, tasks). May import every stage.
"""
