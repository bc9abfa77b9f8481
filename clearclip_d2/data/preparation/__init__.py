"""Converting the official benchmark downloads for the registered datasets (``datasets/prepare_*.py``).

:mod:`.cli`: the command line of each script; :mod:`.plumbing`: reading, atomic and idempotent
writing, the worker pool and the shared options;
:mod:`.label_maps`: the label mappings of each benchmark; :mod:`.converters`: which official
files become which outputs, per benchmark; :mod:`.sources`: the official downloads (file names,
addresses, where to unpack them).
"""
