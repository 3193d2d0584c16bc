"""`python -m tests.bench` (or `./dev bench`): every benchmark, figures to tests/bench/results/."""

from tests.bench import edge, encoder, failover, latency, offload

encoder.main()
edge.main()
offload.main()
latency.main()
failover.main()
