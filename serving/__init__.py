"""Process plumbing that every service shares: stopping tasks, serving ASGI apps with
uvicorn beside other servers in one loop, and running a service on uvloop until a signal.

    tasks   cancel_and_wait: one way to stop asyncio tasks
    http    uvicorn servers that leave signals to their host process
    runner  run_until_signalled: uvloop, SIGINT/SIGTERM → a stop event
    lag     how late the event loop runs: a histogram, and stalls in the log
"""
