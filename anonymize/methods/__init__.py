"""Protection methods: registry and implementations."""
from .base import METHODS, Method, MethodContext, MethodOutput, MethodSpec, get_method, _register_builtin

_register_builtin()

__all__ = ["METHODS", "Method", "MethodContext", "MethodOutput", "MethodSpec", "get_method"]
