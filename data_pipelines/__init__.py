"""Data pipelines: audio -> IS16 features, text -> WordPieces, TFRecords via TFDS
builders, and the tf.data reader. TensorFlow is imported only inside this package."""

import os

# Keep TensorFlow's C++ start-up chatter out of the logs.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
