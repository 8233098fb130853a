"""Command-line tools (``python -m hunyuan.tools.<name>``)."""
