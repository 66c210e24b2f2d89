"""Alignment methods, one module per method (sft, dpo, pgdpo, apo, fcrm, shift).

Not implemented yet: the trainers land with the harness-core and method issues.
"""
