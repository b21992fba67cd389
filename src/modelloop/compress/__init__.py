"""Optimization for serving: ONNX export, reduced precision, and the choice among them."""

from .backends import BACKENDS, ServingModule, choose_backend, make_runner

__all__ = ["BACKENDS", "ServingModule", "choose_backend", "make_runner"]
