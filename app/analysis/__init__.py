"""Analyses over captured attention: pure numpy (and scipy), no torch, no Flask.

Each module takes one layer's arrays at a time where it can, so callers stream long prompts:
head_roles (per-head statistics and labels), sinks, rollout (rollout and flow), norms.
"""
