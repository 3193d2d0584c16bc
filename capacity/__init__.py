"""Sizing a townsquare fleet for an audience: `townsquare plan`.

    model.py     the arithmetic: requests per listener, edges, shields, origin load, egress, cost
    measured.py  the per-edge capacity the plan defaults to, read from the offload benchmark
    prices.py    the public list prices the costs use, stated with where they come from
"""
