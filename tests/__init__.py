"""Tests of mdmail."""
