"""Extra simulated domains (tasks of other shapes, served models of other kinds) with benign
clients and extraction attackers written independently of the default simulator's."""

from audits.simulation.domains.simulator import DOMAINS, simulate_domain

__all__ = ["DOMAINS", "simulate_domain"]
