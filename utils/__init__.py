"""Library code of seg-mentor, one module per concern.

Imports flow one way: the top-level scripts import `fcn_arch` and `utils`;
nothing here imports a script, parses flags or reads a global `args`.
"""
