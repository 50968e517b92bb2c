"""`hactl lab chaos`: a seeded schedule of faults under client load, invariants checked throughout.

`schedule` (pure) draws the faults from a seed; `verdict` (pure) turns what was
seen into outcomes, violations and the report; `load` drives the clients in the
client namespace; `faults` injects and heals each kind on a running lab; `run`
ties them together and always leaves the lab as it found it.
"""
