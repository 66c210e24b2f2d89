"""Alignment methods, one module per method, registered by name (trainers.registry).

Shipped: `sft` (trainers/sft.py). Shared primitives live in trainers/objectives.py and
the Trainer interface in trainers/base.py; the outer loop is harness.runner.
"""
