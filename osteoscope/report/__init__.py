"""Evaluation reports and the figures they contain."""
