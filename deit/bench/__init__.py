"""The benchmark harness that races our models against timm's and Hugging Face's: a tool, imported
only by ``deit benchmark``."""
