"""Model loading, cross-attention discovery and fingerprints."""

from eraselab.models.attention import CrossAttentionLayer, cross_attention_layers
from eraselab.models.fingerprint import module_fingerprint, pipeline_fingerprint
from eraselab.models.loading import load_pipeline

__all__ = ["CrossAttentionLayer", "cross_attention_layers", "load_pipeline", "module_fingerprint",
           "pipeline_fingerprint"]
