"""Offline stand-ins for real models: scripted chat models and a local protocol server."""
