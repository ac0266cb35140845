"""The PipeLite IPython extension (``%load_ext pipelite``). Magics arrive with issue 3."""
