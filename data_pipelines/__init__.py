"""Data pipelines: audio -> IS16 features, text -> WordPieces, TFRecords via TFDS
builders, and the tf.data reader. TensorFlow is imported only inside this package."""
