"""The method core on open_clip: loading, the dense encoder and its attention decomposition, precision, text classifier and cache."""
