"""The CLI's commands, one module per family; `retnet_edge.cli` adds them to the `retnet-edge` group.

Each command parses its options, calls one library function and prints (stdout: results, stderr: the rest).
Only click and light modules are imported at module level, so `retnet-edge --help` never loads torch,
onnxruntime or executorch: heavier imports sit inside the commands.
"""
