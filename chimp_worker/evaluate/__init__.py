"""Judge models on expert-labelled images with the paper's metrics (issue 9).

``metrics``: pure precision/recall/F1, confusion matrices, label maps (no torch).
``datasets``: labelled CSVs and label maps; ``coco``: COCO ground truth and pycocotools mAP.
``mock_dataset``: export mock-imager images as CSV + COCO data sets.
``classifier`` / ``detector``: run a model (or read the database) and score it.
``report``: the paper's table layouts, JSON and precision-recall plots.
``runner``: one call per ``chimp-worker evaluate`` subcommand.
Torch is imported only by the modules that run models, so metrics stay cheap to import.
"""
