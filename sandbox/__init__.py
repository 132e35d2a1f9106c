"""Offline stand-ins for WeChat and WeChat Pay (real HTTP, real crypto). Imported by app.py in
sandbox mode and by tests, by nothing else."""
