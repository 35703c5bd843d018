"""Monitoring: metrics, input profiles and drift, and the prediction log."""
