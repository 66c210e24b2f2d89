"""Alignment methods, one module per method, each registering its Trainer with ``@register_trainer``
(trainers/registry.py finds them: no central list). See docs/adding-a-method.md.

Shared primitives live in trainers/objectives.py, the optimizer step in trainers/optimizer.py and the
Trainer interface in trainers/base.py; the outer loop is harness.runner.
"""
