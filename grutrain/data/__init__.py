"""Readers and samplers that two or more tasks share: shuffled mini-batches, the series CSV and its
time axis, a token vocabulary.

Rule: knows no model and no task; what only one task reads lives in that task's folder.
"""
