"""Deployment: Ray Serve application, Kubernetes manifests and the container smoke test."""
