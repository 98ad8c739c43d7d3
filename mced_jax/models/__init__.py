"""Models: the speech student, the BERT teacher wrapper and the soft-align block."""
