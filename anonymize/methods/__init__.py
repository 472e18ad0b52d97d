"""Protection methods: registry, parameter contracts and implementations."""
from .base import METHODS, Method, MethodContext, MethodOutput, MethodSpec, _register_builtin, get_method, parse_params
from .params import Params, param

_register_builtin()

__all__ = ["METHODS", "Method", "MethodContext", "MethodOutput", "MethodSpec", "Params", "get_method", "param",
           "parse_params"]
