"""Fault drills (``./run drills``): break the worker's world on purpose, then prove that
PostgreSQL holds exactly what the pure core says the produced stream should give.

One module per drill (kill9, broker_restart, postgres_outage, fuzz, flood), a shared harness
(services, worker supervision, paced production) and one verification (verify.py) that every
drill ends with. See docs/reliability.md.
"""
