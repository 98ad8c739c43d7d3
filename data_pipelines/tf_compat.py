"""TensorFlow and TFDS, imported one way everywhere in data_pipelines.

openSMILE's native library aborts the process when it is first loaded after
TensorFlow's (measured: IS16 extraction after `import tensorflow` dies in
opensmile's `run`; the other order works). So openSMILE is loaded first, when it
is installed, before either is imported.
"""

from __future__ import annotations


def opensmile_first() -> None:
  try:
    import opensmile  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  except ImportError:  # readers on machines without opensmile (e.g. accelerators)
    pass


def tensorflow():
  opensmile_first()
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  return tf


def tfds():
  opensmile_first()
  import tensorflow_datasets  # pylint: disable=import-outside-toplevel
  return tensorflow_datasets
