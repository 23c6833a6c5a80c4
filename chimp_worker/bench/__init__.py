"""The throughput benchmark (``chimp-worker bench``): ``run`` measures, ``report`` compares.

Its own package, beside the models rather than inside them: it drives the whole worker
(mock plates, the pipeline, SQLite ISPyB), while ``chimp_worker.models`` only runs models.
"""
