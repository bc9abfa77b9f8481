from .errors import ClearCLIPError
from .io import atomic_write, atomic_write_json

__all__ = ["ClearCLIPError", "atomic_write", "atomic_write_json"]
