"""Evaluation of a model on eval reviews: label scoring, greedy generation, metrics, reports."""
