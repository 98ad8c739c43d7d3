"""Evaluation: labelled corpora in memory, speaker-independent protocols, metrics,
tables and plots, paired statistics, recipe comparison and the classic reference."""
