"""Library code of seg-mentor, one module per concern.

Imports flow one way: the scripts (`fcn_train.py`, `fcn_test.py`) import
`fcn_arch` (the network library) and `utils`; nothing here imports a script,
parses the scripts' flags or reads a global `args`.
"""
