"""Quantized checkpoint writers."""
