"""Shared core of mdmail: names, configuration, per-domain trees and namespaces."""
