"""`python -m tests.bench` (or `./dev bench`): every benchmark, figures to tests/bench/results/."""

from tests.bench import edge, encoder

encoder.main()
edge.main()
