"""The pure core: the Job contract, the planner, the gate and the lineage rules.

Nothing here imports Kopf, the Kubernetes client or torch; I/O lives at the edges.
"""
