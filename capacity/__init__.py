"""Sizing a townsquare fleet for an audience: `townsquare plan`.

    model.py   the arithmetic: requests per listener, edges, shields, origin load, egress, cost
    prices.py  the public list prices the costs use, stated with where they come from
"""
