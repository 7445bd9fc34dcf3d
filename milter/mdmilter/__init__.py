"""The mdmail milter: per-domain recipient checks and policy at SMTP time.

This package lives in milter/mdmilter/ and the folder milter/ has no __init__.py, so
`import milter` anywhere, the repository root included, finds pymilter's C module.
"""
