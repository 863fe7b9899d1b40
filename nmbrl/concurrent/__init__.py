"""Concurrent mode: collector, world-model trainer and agent trainer in separate processes.

``shared`` holds what they share (the real buffer, published weights), ``pacing`` how far they
may run ahead of each other, ``collector_role`` and ``world_model_role`` what the two child
processes run, and ``supervisor`` how a role process is started, watched and stopped. The
Lightning side is in ``callbacks/concurrent.py``.
"""
