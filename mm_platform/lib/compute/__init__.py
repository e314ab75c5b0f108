"""The compute tier: where embedding work runs (in-process by default, or a Ray cluster with warm actors).

Nothing here imports Ray at module import time; ``ray`` is imported only when ray mode is used.
"""
