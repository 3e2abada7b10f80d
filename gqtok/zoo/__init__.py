"""Models by name: the weights folders and cache (paths), the table of known models
(registry), Hub downloads (hub), reference-checkpoint conversion (convert) and ``load_model``
(load). Only ``load`` and ``convert`` import torch."""
