"""Deployment helpers: bundles of an attribution-ready model for Node, the browser and others."""

from onnxsplit.deploy.web import BUNDLE_FORMAT, export_bundle, read_bundle

__all__ = ["BUNDLE_FORMAT", "export_bundle", "read_bundle"]
