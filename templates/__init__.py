"""Jinja templates for generated PyTorch modules and Triton kernels, shipped as package data."""
