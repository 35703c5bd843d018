"""Monitoring: input profiles and drift (metrics and the prediction log join later)."""
