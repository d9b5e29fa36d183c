"""Erasure: methods that edit a model (one module each), the shared closed form, and the Edit artifact."""
