"""Tests of the serving service."""
