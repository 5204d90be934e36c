"""Comparisons with other frameworks, run by hand (not part of training or testing)."""
