"""The leaves every stage may use: no torch, nothing of retnet-edge but `errors`.

Owns: `registry` (the decorator + dict pattern behind formats, targets and runtimes), `io_utils` (atomic
outputs, JSON reads), `interrupts` (signals while writing), `progress` (the stderr bar), `paths` (the
`demo` alias, existence checks), `hub` (Hub ids → a cached snapshot), `confine` (the input-file and path
confinement rules every reader applies), `tokenizer` (tokenizer files). May import: `errors`.
"""
