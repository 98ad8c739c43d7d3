"""Trainers, one module per job."""
