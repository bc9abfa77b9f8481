from .errors import ClearCLIPError
from .io import atomic_write, atomic_write_json, file_sha256

__all__ = ["ClearCLIPError", "atomic_write", "atomic_write_json", "file_sha256"]
