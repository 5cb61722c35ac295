"""Pure policies: functions of a snapshot and parameters that return decisions.

Nothing here performs I/O, reads a clock or draws randomness except from a
seed passed in. Policies import only from :mod:`vmcluster.model` and
:mod:`vmcluster.errors`.
"""
