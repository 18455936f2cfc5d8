"""The model itself: its config, its math and its single-step rewrite.

Owns: `config` (`RetNetConfig`, the one vocabulary of model fields), `presets` (named sizes), `ops`
(RMSNorm, decay, rotary), `retention` (the paper's three cores: parallel eq. 5, chunkwise eq. 7, step
eq. 6), `model` (`DecoderStack.run`, the one layer loop; `RetNet`), `step` (`RetNetStep` /
`RetNetPrefill`: the body with the step / one-chunk core; a target passes its own step core in),
`graph_check` (the position-independence guard). May import: `base`, `errors`; torch. Nothing here
knows a checkpoint format, an export target or a runtime.
"""
