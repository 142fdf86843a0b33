"""Fault-drill helpers: start ``mae3d`` commands as processes, kill them, compare their results."""
