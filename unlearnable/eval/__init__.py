"""Evaluation: robust accuracy, image-quality metrics, matrix summaries and verdicts, class-wise
predictive patterns."""
