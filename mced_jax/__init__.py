"""mced_jax: Multi-level Cross-modal Emotion Distillation (MCED) in JAX/Flax.

Li, Zhao & Jin, "Speech Emotion Recognition via Multi-Level Cross-Modal Distillation".
A frozen text-emotion teacher (BERT) teaches a Conv1D+Transformer speech student on
unlabelled audio/transcript pairs.
"""

__version__ = "0.1.0"
