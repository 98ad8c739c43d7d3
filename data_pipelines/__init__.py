"""Data pipelines: audio -> IS16 features, text -> WordPieces, ArrayRecord shards via
TFDS builders, and the one reader (PreparedDataset) with the global batch plan.
TensorFlow is imported only inside this package."""

import os

# Keep TensorFlow's C++ start-up chatter out of the logs.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
