"""Greedy, beam and sampling search; attention alignment export and plots."""
