"""`python -m tests.bench` (or `./dev bench`): every benchmark, figures to tests/bench/results/,
then the plots of whatever results there are to docs/img/."""

from tests.bench import edge, encoder, failover, joinstorm, latency, offload, plots

encoder.main()
edge.main()
offload.main()
joinstorm.main()
latency.main()
failover.main()
plots.main()
