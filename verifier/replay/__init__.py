"""Export and audit replay: a chain as a file, re-executed from genesis with every root checked.

``export`` writes and reads chain export files, ``engine`` replays a home or an export in a
fresh temporary state through ``verifier.checks``, ``audit`` folds the re-executed events into a
per-task audit, and ``plot`` draws it.
"""
