"""Example files shipped inside the package (``chimp-worker config example`` prints one)."""
