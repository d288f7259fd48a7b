"""The names of the classification methods, importable without the scoring code.

The command line needs these names for ``--method``'s help and checks before it imports any
stage (the stages import torch); :mod:`pipeline.stages.classify` and
:mod:`pipeline.stages.compositional` score them. Until every method is one record of the method
registry, this module is where the names live.
"""
from __future__ import annotations

#: image-level methods, scored by pipeline/stages/classify.py
IMAGE_METHODS = ("clip", "clip-e", "dclip", "cupl", "wca", "lazsl", "awt", "waffle", "dclip-nameless", "object-bound")
#: (state, object) pairs, scored by pipeline/stages/compositional.py
CZSL_METHODS = ("czsl-clip", "czsl-dclip", "czsl-local")
METHODS = IMAGE_METHODS + CZSL_METHODS
