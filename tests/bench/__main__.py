"""`python -m tests.bench` (or `./dev bench`): every benchmark, figures to tests/bench/results/."""

from tests.bench import edge, encoder, offload

encoder.main()
edge.main()
offload.main()
