"""Plumbing every app may import: the domain error type, the API's error format and pagination,
token hashing, the per-process cache and the HTMX fragment test.

It imports no app (inventory, sessions, costs, shopper): apps sit on top of it, and the project
package ``shopper`` wires them (tests/test_import_graph.py checks both).
"""
