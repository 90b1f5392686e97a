"""Weight files: our own files (``files``), foreign layouts adapted to timm's at load time
(``layouts``), Hugging Face ``save_pretrained`` folders (``hf_folder``), the architecture read
from a state dict's shapes (``infer``), published weights (``hub``) and models with weights
(``factory``: ``create_model``, ``build_from_checkpoint``, ``convert_checkpoint``)."""
