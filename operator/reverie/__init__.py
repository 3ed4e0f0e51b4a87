"""Reverie: sleep cycles for large language models on Kubernetes.

A deployed model periodically goes offline and learns: memory consolidation
(Knowledge Seeding, distilling in-context knowledge into a new expert slot) and
dreaming (a self-generated curriculum trained with RL), gated by evaluation
before a new generation is promoted.  See ``ARCHITECTURE`` in the README.
"""

__version__ = "0.1.0"

GROUP = "reverie.dev"
VERSION = "v1alpha1"

# Annotations users (or `reverie approve|reject`) write on a SleepCycle waiting
# in AwaitingApproval: value "approved" or "rejected".
APPROVAL_ANNOTATION = f"{GROUP}/approval"
# The label that names a ModelLineage on everything made for it: phase Jobs and their
# ConfigMaps, export Jobs, scheduled SleepCycles.
LINEAGE_LABEL = f"{GROUP}/lineage"
# Prefix of Kopf's own bookkeeping annotations on our objects.
KOPF_PREFIX = f"kopf.{GROUP}"
