"""A simulated prediction API: the served model, its users (benign personas, hard negatives
and extraction attackers), the canonical log archive they leave, optional faults, and the
ground truth to score detectors and ingest against."""

from audits.simulation.simulator import DEFAULT_START, simulate

__all__ = ["DEFAULT_START", "simulate"]
