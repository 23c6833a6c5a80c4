"""``python -m chimp_worker`` runs the command line."""

from chimp_worker.cli import main

main()
