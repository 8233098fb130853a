"""HunyuanVideo model library: pure PyTorch, no ComfyUI imports.

Stages live in sub-packages (``dit``, ``text``, ``vae``, ``sampling``, ``rewrite``); shared
checkpoint reading lives in :mod:`hunyuan.checkpoint_io`. Inside this package use relative
imports only, so that the same code works when ComfyUI imports the pack under its folder name.
"""
