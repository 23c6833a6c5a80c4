"""Fine-tune the CHiMP models on a facility's own images (issue 9).

``classifier``: ConvNeXt classifier, checkpoints in the published layout.
``detector``: Mask R-CNN detectors, raw state_dicts as published.
``augment``: the paper's augmentations; ``data``: data sets and samplers; ``loop``: shared parts.
Importing this package's modules imports torch.
"""
