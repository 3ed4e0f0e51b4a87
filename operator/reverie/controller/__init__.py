"""The Kubernetes edge: Kopf handlers, Job rendering, API access, metrics."""
