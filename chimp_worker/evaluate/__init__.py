"""Judge models on expert-labelled images with the paper's metrics (issue 9).

``metrics``: pure precision/recall/F1, confusion matrices, label maps (no torch).
``datasets``: read and write labelled sets (CSV of path,label; COCO JSON).
``classifier`` / ``detector``: run a model (or read the database) and score it.
``report``: the paper's table layouts, JSON and precision-recall plots.
Torch is imported only by the modules that run models, so metrics stay cheap to import.
"""
